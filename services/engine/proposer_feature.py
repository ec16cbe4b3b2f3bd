"""Drafting with a feature draft (one sequence): the target's hidden states in, k tokens out.

The verifier hands over the target's final hidden state at every position it caches
(``take_features``); a ``FeatureDraft`` reads the feature of position j - 1 beside token j
(``feature_draft.py``). Each round the proposer rolls its slot back to the entries that were
built on the target's own features and still match the committed sequence (``sync_cache`` with
a limit), feeds the rest in one forward with the target's features (usually the accepted drafts
and the new token), then drafts one token per forward, feeding each draft with its own output
as the feature: past the committed sequence the target's features do not exist yet. Those
entries are recomputed next round, once the verdict has brought the real ones. A position whose
feature has not arrived reads zeros: drafts get worse, the output stays exact (the verifier
decides).
When sampling, tokens and their sparse distributions come from ``DraftCursor.read``, as for a
plain draft model.
Non-goals: draft-ahead (the draft service's engine drafts plain models ahead), trees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specdec.engine.batch import Chunk
from specdec.engine.drafting import DraftCursor
from specdec.engine.feature_draft import FeatureDraft
from specdec.engine.proposer import EMPTY_PROPOSAL, Proposal, Proposer
from specdec.engine.proposer_draft import DEFAULT_TOP_M, DEFAULT_TOP_MASS, DraftModelProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams


class FeatureDraftProposer(DraftModelProposer):
    """``DraftModelProposer`` for a ``FeatureDraft`` runner: the same slot and settings, its own
    feeding (each token with its input feature)."""

    def __init__(
        self,
        runner: ModelRunner,
        vocab_limit: int | None = None,
        top_m: int = DEFAULT_TOP_M,
        top_mass: float = DEFAULT_TOP_MASS,
    ) -> None:
        if not isinstance(runner.model, FeatureDraft):
            raise TypeError("FeatureDraftProposer needs a feature draft")
        super().__init__(runner, vocab_limit, top_m, top_mass)
        weight = runner.model.lm_head.weight
        size = (runner.max_seq_len, runner.config.hidden_size)
        self.target_features = torch.zeros(size, dtype=weight.dtype, device=weight.device)
        self.known = 0  # positions [0, known) have the target's feature
        self.exact = 0  # leading entries built on the target's features only

    def take_features(self, features: torch.Tensor, end: int) -> None:
        """The target's features of positions [end - n, end).  # features [n, C]"""
        start = end - len(features)
        if start > self.known:  # rows that never came: zeros (drafts worsen, output exact)
            self.target_features[self.known : start] = 0
        self.target_features[start:end] = features.to(self.target_features.dtype)
        self.known = end
        self.exact = min(self.exact, start + 1)  # entries that read a position just written

    def propose(
        self, committed: Sequence[int], k: int, params: SamplingParams, seed: int
    ) -> Proposal:
        if k <= 0:
            return EMPTY_PROPOSAL
        n = len(committed)
        state = self.state
        state.committed = list(committed)
        state.params, state.seed = params, seed
        cursor = DraftCursor(state, k)
        cursor.plan(self.runner)
        if cursor.done:
            return EMPTY_PROPOSAL
        feed = state.sync_cache(self.runner, self.exact)
        last = self._forward(cursor, feed, self._inputs(len(state.cached), n))
        self.exact = min(n, self.known + 1)  # position j read the feature of j - 1
        while not cursor.done:
            last = self._forward(cursor, [cursor.token_ids[-1]], last)
        return cursor.proposal()

    def _inputs(self, start: int, end: int) -> torch.Tensor:
        """Input features of positions [start, end): the target's feature of the position
        before each, zeros at 0 and where it has not arrived.  # → [end - start, C]"""
        out = self.target_features.new_zeros(end - start, self.target_features.shape[1])
        lo, hi = max(start, 1), min(end, self.known + 1)
        if hi > lo:
            out[lo - start : hi - start] = self.target_features[lo - 1 : hi - 1]
        return out

    def _forward(
        self, cursor: DraftCursor, tokens: list[int], features: torch.Tensor
    ) -> torch.Tensor:
        """Feed ``tokens``; the cursor reads the distribution after the last one. Returns the
        draft's output there, the feature the next draft token reads.  # → [1, C]"""
        chunk = Chunk(self.slot, tokens, len(self.cached), 1, features=features)
        logits, hidden = self.runner.step_hidden([chunk])
        self.cached.extend(tokens)
        cursor.read(logits[0][:, : self.vocab_limit], self.top_m, self.top_mass)
        return hidden[0][-1:]


def model_proposer(
    runner: ModelRunner,
    vocab_limit: int | None = None,
    top_m: int = DEFAULT_TOP_M,
    top_mass: float = DEFAULT_TOP_MASS,
) -> Proposer:
    """The proposer for a draft model: a feature draft's or a plain one's."""
    if isinstance(runner.model, FeatureDraft):
        return FeatureDraftProposer(runner, vocab_limit, top_m, top_mass)
    return DraftModelProposer(runner, vocab_limit, top_m, top_mass)
