"""Drafting with a small model: k tokens for many sequences, one batched forward per position.

A ``DraftCursor`` is one sequence's drafting in progress. ``advance`` runs one batched forward
over any set of cursors (each feeds what it has not fed yet and reads the draft's distribution
at its next position), so the draft service can interleave the cursors of many sequences, and
of draft-ahead's many branches, and stop between forwards for more urgent work.
``draft_batch`` runs cursors to the end: the in-process proposer and the service's on-demand
drafting use it.

When sampling, each token is drawn from the draft's warped distribution cut to its likeliest
tokens (``sparse_top``), with randomness keyed by (seed, position, draft stream), and exactly that
sparse distribution is kept for the verifier. A cursor with ``tops`` > 0 also keeps the draft's
``tops`` likeliest tokens and their probabilities at each draft position, and at one position
past the last draft (it then feeds the last draft too): draft-ahead ranks the outcomes of a
verification by them (``draft_ahead.likely_outcomes``).
Non-goals: scheduling (the services decide which cursors go together), tree attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from specdec.engine.batch import Chunk
from specdec.engine.proposer import Proposal
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import (
    STREAM_DRAFT,
    position_generator,
    sample_sparse_token,
    sparse_top,
    target_probs,
)
from specdec.engine.sequence import SequenceState


@dataclass
class DraftCursor:
    """Up to ``depth`` draft tokens after ``seq.committed``, drafted one forward at a time."""

    seq: SequenceState
    depth: int
    tops: int = 0
    token_ids: list[int] = field(default_factory=list)  # [<= depth] drafted so far
    token_probs: list[float] = field(default_factory=list)  # the draft's probability of each
    top_ids: list[list[int]] = field(default_factory=list)  # per position: likeliest first
    top_probs: list[list[float]] = field(default_factory=list)
    _sparse: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)
    _forwards_left: int = -1  # set by ``plan``; -1 before

    def plan(self, runner: ModelRunner) -> None:
        """Fix how many forwards this cursor takes, within the slot's room."""
        room = runner.max_seq_len - len(self.seq.committed)  # positions left after committed
        self.depth = max(0, min(self.depth, room + 1))  # the last draft is not fed...
        extra = 1 if self.tops and self.depth <= room else 0  # ...unless tops asks for it
        self._forwards_left = self.depth + extra if (self.depth or extra) else 0

    @property
    def done(self) -> bool:
        return self._forwards_left == 0

    @property
    def drafted(self) -> bool:
        """Every draft token is there (a last forward for ``tops`` may still be due)."""
        return self._forwards_left >= 0 and len(self.token_ids) >= self.depth

    def _feed(self, runner: ModelRunner) -> list[int]:
        if not self.token_ids:
            return self.seq.sync_cache(runner)  # committed tokens not in the slot yet
        return [self.token_ids[-1]]

    def read(self, logits: torch.Tensor, top_m: int, top_mass: float) -> None:
        """Take the distribution at the next position: draw a token (if still drafting)."""
        self._forwards_left -= 1
        params, seq = self.seq.params, self.seq
        drafting = len(self.token_ids) < self.depth
        if params.is_greedy:
            token = int(torch.argmax(logits[0]))
            if self.tops:
                top = torch.topk(torch.softmax(logits.float(), dim=-1)[0], self.tops)
                self.top_ids.append(top.indices.tolist())
                self.top_probs.append(top.values.tolist())
            prob = self.top_probs[-1][0] if self.tops else 1.0
        else:
            ids, probs = sparse_top(target_probs(logits, params), top_m, top_mass)  # [1, M]
            if self.tops:
                self.top_ids.append(ids[0, : self.tops].tolist())
                self.top_probs.append(probs[0, : self.tops].tolist())
            if not drafting:
                return
            position = len(seq.committed) + len(self.token_ids)
            generator = position_generator(seq.seed, position, STREAM_DRAFT)
            token = sample_sparse_token(ids[0], probs[0], generator)
            prob = float(probs[0][ids[0] == token].sum())
            self._sparse.append((ids[0], probs[0]))
        if drafting:
            self.token_ids.append(token)
            self.token_probs.append(prob)

    def proposal(self) -> Proposal:
        """The drafted tokens, with their sparse distributions when sampling."""
        if not self._sparse:
            return Proposal(list(self.token_ids))
        ids = torch.stack([s[0] for s in self._sparse])  # [K, M]
        probs = torch.stack([s[1] for s in self._sparse])  # [K, M]
        return Proposal(list(self.token_ids), ids, probs)


def advance(
    runner: ModelRunner,
    cursors: Sequence[DraftCursor],
    vocab_limit: int,
    top_m: int,
    top_mass: float,
) -> None:
    """One batched forward for every cursor that is not done (``plan`` them first)."""
    live = [c for c in cursors if not c.done]
    if not live:
        return
    chunks = [Chunk(c.seq.slot, c._feed(runner), len(c.seq.cached), 1) for c in live]
    all_logits = runner.step(chunks)  # per cursor [1, V]
    for cursor, chunk, logits in zip(live, chunks, all_logits, strict=True):
        cursor.seq.cached.extend(chunk.token_ids)
        cursor.read(logits[:, :vocab_limit], top_m, top_mass)


def draft_batch(
    runner: ModelRunner,
    cursors: Sequence[DraftCursor],
    vocab_limit: int,
    top_m: int,
    top_mass: float,
) -> list[Proposal]:
    """Run ``cursors`` to the end together; their proposals, in order."""
    for cursor in cursors:
        cursor.plan(runner)
    while not all(c.done for c in cursors):
        advance(runner, cursors, vocab_limit, top_m, top_mass)
    return [c.proposal() for c in cursors]
