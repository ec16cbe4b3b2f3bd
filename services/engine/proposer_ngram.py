"""N-gram (prompt lookup) drafting: copy what followed the last time the recent tokens appeared.

No model: find the most recent earlier occurrence of the sequence's last n tokens (n from
``max_ngram`` down to ``min_ngram``) and propose the tokens that followed it. Cheap and strong on
code, edits and retrieval-style prompts that repeat their input. The draft distribution is a
point mass on each proposed token, which keeps speculative sampling exact.
Non-goals: suffix trees, corpus-level n-gram tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specdec.engine.proposer import EMPTY_PROPOSAL, Proposal
from specdec.engine.sampling import SamplingParams


def lookup(tokens: Sequence[int], k: int, max_ngram: int = 4, min_ngram: int = 1) -> list[int]:
    """Up to ``k`` tokens that followed the latest earlier match of the trailing n-gram."""
    tokens = list(tokens)
    n_tokens = len(tokens)
    if n_tokens < 2:
        return []
    last = tokens[-1]
    # Every candidate n-gram ends with the newest token: find those ends once, newest first
    # (a match must leave a token after it), then try the longest n at each.
    ends = [i for i in range(n_tokens - 2, -1, -1) if tokens[i] == last]
    for n in range(min(max_ngram, n_tokens - 1), min_ngram - 1, -1):
        tail = tokens[n_tokens - n :]
        for end in ends:
            start = end - n + 1
            if start >= 0 and tokens[start : end + 1] == tail:
                return tokens[end + 1 : end + 1 + k]
    return []


class NgramProposer:
    """``Proposer`` over prompt lookup; holds no state between rounds."""

    def __init__(self, max_ngram: int = 4, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram

    def propose(
        self, committed: Sequence[int], k: int, params: SamplingParams, seed: int
    ) -> Proposal:
        draft = lookup(committed, k, self.max_ngram, self.min_ngram) if k > 0 else []
        if not draft:
            return EMPTY_PROPOSAL
        if params.is_greedy:
            return Proposal(draft)
        ids = torch.tensor(draft, dtype=torch.int64)[:, None]  # [K, 1]
        return Proposal(draft, ids, torch.ones(len(draft), 1))  # point mass: q(d) = 1

    def close(self) -> None:
        return None
