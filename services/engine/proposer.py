"""The drafting protocol: anything that can guess the next k tokens of a sequence.

A drafting method (a small model, n-gram prompt lookup, ...) is one module implementing
``Proposer``. The proposal carries the draft distribution sparsely (top-M ids and probabilities)
when sampling, so the verifier knows q exactly at each proposed position without a
full-vocabulary vector. Greedy proposals carry no probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from specdec.engine.sampling import SamplingParams


@dataclass(frozen=True)
class Proposal:
    """Draft tokens for the positions right after the committed sequence."""

    draft_token_ids: list[int]  # [K]
    draft_sparse_ids: torch.Tensor | None = None  # [K, M] int64, None when greedy
    draft_sparse_probs: torch.Tensor | None = None  # [K, M] fp32, sums to 1 per row

    def __len__(self) -> int:
        return len(self.draft_token_ids)

    def head(self, k: int) -> Proposal:
        """The first ``k`` drafts (a prefix of a proposal is a proposal: each draft's
        distribution depends only on the drafts before it)."""
        if len(self) <= k:
            return self
        ids, probs = self.draft_sparse_ids, self.draft_sparse_probs
        return Proposal(
            self.draft_token_ids[:k],
            ids[:k] if ids is not None else None,
            probs[:k] if probs is not None else None,
        )


EMPTY_PROPOSAL = Proposal([])


class Proposer(Protocol):
    """Drafts continuations of one sequence; keeps whatever state it needs between rounds."""

    def propose(
        self, committed: Sequence[int], k: int, params: SamplingParams, seed: int
    ) -> Proposal:
        """Up to ``k`` tokens continuing ``committed`` (which ends with the newest token).

        ``committed`` may have been cut back since the last call (rejected drafts): the
        proposer rolls its own state back to match. ``seed`` keys its randomness by position.
        """
        ...

    def close(self) -> None:
        """Release what the proposer holds (its KV-cache slot, if any)."""
        ...
