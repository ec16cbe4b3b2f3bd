"""A draft that reads the target's hidden states: decoder layers over (token, target feature).

EAGLE (arXiv 2401.15077): the target's last hidden state (after its final norm) at position
j - 1 already knows most of what token j + 1 will be; a draft given that feature beside token j
needs few layers to predict the feature at j, and an LM head (here a reduced one, FR-Spec)
turns it into the next token. At position j the draft's input is ``fc([embed(x_j), f_{j-1}])``
(f_{-1} = 0); its output after its own final norm, h_j, stands for f_j: the next draft step
feeds it back as the feature of j when the target's is not known yet (drafts past the committed
sequence), and when the verifier's verdict brings the true features, the draft's cache entries
built on predicted ones are recomputed (``proposer_feature.py``).

Parameter names are ``DecoderModel``'s plus ``model.fc``, so a token draft of the target's
shape becomes a feature draft by adding ``fc`` (``[I, 0]``: the feature ignored at first).
config.json marks such a draft with ``specdec_feature_draft: true``. The embedding is the
target's, frozen.
Non-goals: trees of drafts (EAGLE's dynamic trees), several feature layers (EAGLE-3).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from specdec.core.model_config import ModelConfig
from specdec.engine.model import DecoderModel


class FeatureDraft(DecoderModel):
    """``DecoderModel`` with ``model.fc`` in front of its layers (``inputs``); its forward, with
    or without ``hidden`` (its own features then), reads each token's input feature."""

    reads_features = True

    def __init__(self, cfg: ModelConfig) -> None:
        if not cfg.feature_draft:
            raise ValueError("a FeatureDraft's config needs feature_draft=True")
        super().__init__(cfg)
        c = cfg.hidden_size
        self.model.fc = nn.Linear(2 * c, c, bias=True)

    def features_dense(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Whole sequences from position 0, causal, no cache (training): the output after the
        final norm at every position.  # input_ids [B, T], features [B, T, C] (f_{j-1} at j)
        → [B, T, C]"""
        return self.dense(self.inputs(input_ids, features))

    def inputs(self, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """fc([embedding, feature]).  # [..., T], [..., T, C] → [..., T, C]"""
        if features is None:  # (``ModelRunner`` checks every chunk has them)
            raise TypeError("a feature draft reads each token's input feature: none given")
        emb = self.model.embed_tokens(input_ids)
        fc = cast(nn.Linear, self.model.fc)
        return fc(torch.cat([emb, features.to(emb.dtype)], dim=-1))


def shifted(features: torch.Tensor) -> torch.Tensor:
    """Each position's input feature from the target's features of a sequence: f_{j-1} at j,
    zeros at 0.  # [..., T, C] → [..., T, C]"""
    out = torch.zeros_like(features)
    out[..., 1:, :] = features[..., :-1, :]
    return out
