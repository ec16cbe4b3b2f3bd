"""Drafting with a small causal LM that shares the target's tokenizer.

The proposer owns one KV-cache slot of the draft runner and remembers which tokens it holds.
Each round it rolls back to the longest prefix it shares with the committed sequence, feeds the
rest (usually the newest token, or the last draft and the bonus token after a full acceptance)
and then decodes k tokens one at a time. When sampling, it draws from its own warped
distribution truncated to the top ``top_m`` tokens and ships exactly that sparse distribution.
Non-goals: tree drafting, batching several sequences (the draft service does that).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specdec.engine.batch import Chunk
from specdec.engine.proposer import EMPTY_PROPOSAL, Proposal
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import (
    STREAM_DRAFT,
    SamplingParams,
    position_generator,
    sample_sparse_token,
    sparse_top,
    target_probs,
)

DEFAULT_TOP_M = 32  # draft probabilities shipped per position when sampling


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class DraftModelProposer:
    """``Proposer`` backed by a draft ``ModelRunner``; one slot for the life of a sequence."""

    def __init__(
        self, runner: ModelRunner, vocab_limit: int | None = None, top_m: int = DEFAULT_TOP_M
    ) -> None:
        self.runner = runner
        self.slot = runner.cache.allocate()
        self.cached: list[int] = []  # the tokens whose keys/values the slot holds
        # Ids the target can score; a draft with a padded, larger embedding never proposes others.
        self.vocab_limit = vocab_limit or runner.vocab_size
        self.top_m = top_m

    def propose(
        self, committed: Sequence[int], k: int, params: SamplingParams, seed: int
    ) -> Proposal:
        if k <= 0:
            return EMPTY_PROPOSAL
        room = self.runner.max_seq_len - len(committed) + 1  # the draft feeds up to d_{k-1}
        k = min(k, room)
        if k <= 0:
            return EMPTY_PROPOSAL
        keep = min(common_prefix_len(self.cached, committed), len(committed) - 1)
        self.runner.cache.rollback_to(self.slot, keep)
        del self.cached[keep:]
        feed = list(committed[keep:])  # [>= 1] ends with the newest committed token
        draft_ids: list[int] = []
        sparse_ids: list[torch.Tensor] = []
        sparse_probs: list[torch.Tensor] = []
        for i in range(k):
            logits = self.runner.step([Chunk(self.slot, feed, len(self.cached), 1)])[0]
            self.cached.extend(feed)
            logits = logits[:, : self.vocab_limit]  # [1, V]
            position = len(committed) + i  # absolute position of the token being drafted
            if params.is_greedy:
                token = int(torch.argmax(logits[0]))
            else:
                ids, probs = sparse_top(target_probs(logits, params), self.top_m)  # [1, M] each
                generator = position_generator(seed, position, STREAM_DRAFT)
                token = sample_sparse_token(ids[0], probs[0], generator)
                sparse_ids.append(ids[0])
                sparse_probs.append(probs[0])
            draft_ids.append(token)
            feed = [token]
        if params.is_greedy:
            return Proposal(draft_ids)
        return Proposal(draft_ids, torch.stack(sparse_ids), torch.stack(sparse_probs))

    def close(self) -> None:
        if self.slot is not None:
            self.runner.cache.free(self.slot)
            self.slot = None  # type: ignore[assignment]
