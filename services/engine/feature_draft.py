"""A draft that reads the target's hidden states: one decoder layer over (token, target feature).

EAGLE (arXiv 2401.15077): the target's last hidden state (after its final norm) at position
j - 1 already knows most of what token j + 1 will be; a draft given that feature and token j
needs one layer to predict the feature at j, and the target's own LM head (here a reduced one,
FR-Spec) turns it into the next token. At position j the draft's input is
``fc([embed(x_j), f_{j-1}])`` (f_{-1} = 0); its output h_j stands for f_j: the next draft step
feeds it back as the feature of j when the target's is not known yet (drafts past the committed
sequence), and when the verifier's verdict brings the true features, the draft's cache entries
built on predicted ones are recomputed (``proposer_feature.py``).

Parameter names follow ``DecoderModel`` (``model.embed_tokens``, ``model.layers.0...``,
``lm_head``) plus ``model.fc``; there is no final norm (h is compared with normed features
directly). config.json marks such a draft with ``specdec_feature_draft: true``. The embedding is
the target's, frozen.
Non-goals: trees of drafts (EAGLE's dynamic trees), several feature layers (EAGLE-3).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from specdec.core.model_config import ModelConfig
from specdec.engine.batch import ForwardBatch
from specdec.engine.kv_cache import KVCache
from specdec.engine.model import DecoderLayer, DecoderModel
from specdec.engine.packed_linear import linear
from specdec.engine.rope import cos_sin


class FeatureDraft(DecoderModel):
    """``DecoderModel`` with ``model.fc`` in front of its layers and no final norm; every
    forward also takes each token's input feature."""

    reads_features = True

    def __init__(self, cfg: ModelConfig) -> None:
        if not cfg.feature_draft:
            raise ValueError("a FeatureDraft's config needs feature_draft=True")
        super().__init__(cfg)
        c = cfg.hidden_size
        self.model.fc = nn.Linear(2 * c, c, bias=True)
        del self.model.norm

    def forward(  # type: ignore[override]
        self, batch: ForwardBatch, cache: KVCache, hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """fp32 logits of the requested tokens; with ``hidden``, also every token's output
        (its predicted feature).  # → [N, V] (, [T, C])"""
        assert batch.features is not None  # ``ModelRunner`` checks every chunk has them
        emb = self.model.embed_tokens(batch.input_ids)  # [T, C]
        fc = cast(nn.Linear, self.model.fc)
        x = fc(torch.cat([emb, batch.features.to(emb.dtype)], dim=-1))  # [T, C]
        cos, sin = cos_sin(batch.positions, self.inv_freq, x.dtype)  # [T, 1, D] each
        for layer in self.model.layers:
            x = layer(x, batch, cache, cos, sin)
        rows = x[batch.logit_indices]  # [N, C]
        logits = self.full_vocab(
            linear(rows, self.lm_head_packed, self.lm_head.weight, None).float()
        )  # [N, V]
        return (logits, x) if hidden else logits

    def features_dense(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Whole sequences from position 0, causal, no cache (training): the output at every
        position.  # input_ids [B, T], features [B, T, C] (f_{j-1} at j) → [B, T, C]"""
        t = input_ids.shape[1]
        emb = self.model.embed_tokens(input_ids)  # [B, T, C]
        x = self.model.fc(torch.cat([emb, features.to(emb.dtype)], dim=-1))  # [B, T, C]
        positions = torch.arange(t, device=input_ids.device)
        cos, sin = cos_sin(positions, self.inv_freq, x.dtype)  # [T, 1, D] each
        for layer in self.model.layers:
            x = cast(DecoderLayer, layer).forward_dense(x, cos, sin)
        return x

    def hidden_dense(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise TypeError("a feature draft needs features: use features_dense")


def shifted(features: torch.Tensor) -> torch.Tensor:
    """Each position's input feature from the target's features of a sequence: f_{j-1} at j,
    zeros at 0.  # [..., T, C] → [..., T, C]"""
    out = torch.zeros_like(features)
    out[..., 1:, :] = features[..., :-1, :]
    return out
