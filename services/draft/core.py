"""The draft replica's state: a ``DraftEngine`` run by the scheduler, and prompt lookup.

Model drafting for every open stream goes through one ``engine.draft_engine.DraftEngine``: on
demand (a step the router waits for) and ahead (draft-ahead on the verification in flight).
Its forwards are small, so the scheduler runs them all on the event loop, and the stream
handlers call in directly. Prompt-lookup drafting needs no model and answers at once. A feature
draft (one that reads the target's hidden states, ``engine/proposer_feature.py``) drafts each
sequence on demand, at once, from the hidden states the router passes on: no draft-ahead.

A forward that raises is run again in halves (the scheduler splits it) until the cursor at
fault fails alone: its step's caller gets the error, every other cursor goes on.
Non-goals: the wire (``server.py``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import torch

from specdec.core.errors import InvalidRequest
from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.engine.draft_engine import (
    NO_AHEAD,
    Ahead,
    AheadSink,
    DraftEngine,
    DraftSequence,
    Forward,
)
from specdec.engine.proposer import Proposal
from specdec.engine.proposer_draft import DEFAULT_TOP_M, DEFAULT_TOP_MASS
from specdec.engine.proposer_feature import FeatureDraftProposer
from specdec.engine.proposer_ngram import NgramProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.replica.scheduler import Scheduler

_NGRAM = NgramProposer()
log = logging.getLogger("specdec.draft")


@dataclass
class LookupSequence:
    """A sequence drafted by prompt lookup: no slot, no draft-ahead."""

    committed: list[int]
    params: SamplingParams
    seed: int


@dataclass
class FeatureSequence:
    """A sequence a feature draft serves: its proposer's slot, drafting on demand only."""

    committed: list[int]
    params: SamplingParams
    seed: int
    proposer: FeatureDraftProposer


Sequence = DraftSequence | LookupSequence | FeatureSequence
# The target's hidden states a step brings: rows [n, C] and the position after the last.
Hidden = tuple[torch.Tensor, int]


class _Forward:
    """The engine's ``Forward``, as the scheduler runs it: splittable, and when it fails, the
    steps waiting on its cursors get the error."""

    def __init__(self, core: DraftCore, forward: Forward) -> None:
        self.core, self.forward = core, forward
        self.cost = forward.cost

    def run(self) -> None:
        self.forward.run()

    def finish(self, elapsed_ns: int) -> None:
        # Each cursor's callbacks apart: one that raises fails its own step only.
        for job in self.forward.jobs:
            try:
                job.settle()
            except Exception as exc:
                log.error("a draft cursor's callback failed", exc_info=exc)
                self._fail([job], exc)
        self.forward.finish(elapsed_ns)  # (each callback runs once: this only tidies up)

    def fail(self, exc: Exception) -> None:
        self._fail(self.forward.jobs, exc)

    def _fail(self, jobs: list[Any], exc: Exception) -> None:
        Forward(self.forward.engine, jobs).fail(exc)  # the cursors are dropped
        for job in jobs:
            _, future = self.core._waiting.pop(id(job), (None, None))
            if future is not None and not future.done():
                future.set_exception(exc)

    def split(self) -> list[_Forward]:
        jobs, engine = self.forward.jobs, self.forward.engine
        half = (len(jobs) + 1) // 2
        parts = (jobs[:half], jobs[half:])
        return [_Forward(self.core, Forward(engine, part)) for part in parts if part]


class DraftCore:
    """Owns the draft model (optional: a replica may serve prompt lookup only)."""

    def __init__(
        self,
        runner: ModelRunner | None,
        vocab_limit: int | None = None,
        top_m: int = DEFAULT_TOP_M,
        top_mass: float = DEFAULT_TOP_MASS,
        max_seq_len: int = 4096,
    ) -> None:
        self.runner = runner
        self.max_seq_len = runner.max_seq_len if runner else max_seq_len
        vocab_limit = vocab_limit or (runner.vocab_size if runner else 1 << 31)
        self.vocab_limit, self.top_m, self.top_mass = vocab_limit, top_m, top_mass
        self.reads_features = runner is not None and runner.model.reads_features
        plain = runner is not None and not self.reads_features
        self.engine = DraftEngine(runner, vocab_limit, top_m, top_mass) if plain else None
        self.active_sequences = 0
        self.scheduler: Scheduler | None = None
        # The futures of steps waiting on a cursor, by id of the engine's job drafting it.
        self._waiting: dict[int, tuple[object, asyncio.Future[Proposal]]] = {}

    def start(self) -> None:
        engine = self.engine
        if engine is None:
            return
        # Draft forwards are small: none leaves the event loop (see the module docstring).
        self.scheduler = Scheduler(self._next_forward, "draft", inline_max_cost=1 << 62)
        engine.on_work = self.scheduler.wake

    def _next_forward(self) -> _Forward | None:
        assert self.engine is not None
        forward = self.engine.next_forward()
        return _Forward(self, forward) if forward is not None else None

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()

    @property
    def queued(self) -> int:
        return self.engine.queued if self.engine else 0

    @property
    def slots_in_use(self) -> int:
        return self.runner.cache.slots_in_use if self.runner else 0

    def open(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        seed: int,
        ngram: bool,
        ahead: Ahead = NO_AHEAD,
        sink: AheadSink | None = None,
    ) -> Sequence:
        """A new sequence; with draft-ahead, proposals for the likeliest first tokens follow
        through ``sink``."""
        params.validate()
        if ngram:
            self.active_sequences += 1
            return LookupSequence(list(prompt_ids), params, seed)
        if self.reads_features:
            assert self.runner is not None
            proposer = FeatureDraftProposer(
                self.runner, self.vocab_limit, self.top_m, self.top_mass
            )  # raises OutOfSlots
            self.active_sequences += 1
            return FeatureSequence(list(prompt_ids), params, seed, proposer)
        if self.engine is None:
            raise InvalidRequest("method", "this draft replica has no model; use n-gram")
        dseq = self.engine.open(prompt_ids, params, seed, ahead, sink)
        self.active_sequences += 1
        return dseq

    def step(
        self,
        seq: Sequence,
        position: int,
        token_ids: list[int],
        depth: int,
        verifying: int,
        ahead: Ahead,
        hidden: Hidden | None = None,
    ) -> asyncio.Future[Proposal] | None:
        """The committed sequence is now its first ``position`` tokens and ``token_ids``. With
        ``depth``: a future of ``depth`` draft tokens for it (the router verifies them next).
        Without: the router verifies the first ``verifying`` drafts of the proposal this replica
        sent ahead for it. Either way, draft-ahead then works on that verification. ``hidden``:
        the target's hidden states since the last step, for a feature draft (others ignore
        them); it drafts at once, on the event loop (a few small forwards)."""
        committed = self._committed(seq.committed, position, token_ids, depth, verifying)
        future: asyncio.Future[Proposal] = asyncio.get_running_loop().create_future()
        if isinstance(seq, LookupSequence):
            seq.committed = committed
            future.set_result(_NGRAM.propose(committed, depth, seq.params, seq.seed))
            return future
        if isinstance(seq, FeatureSequence):
            seq.committed = committed
            if hidden is not None:
                seq.proposer.take_features(*hidden)
            if not depth:
                return None
            future.set_result(seq.proposer.propose(committed, depth, seq.params, seq.seed))
            return future
        assert self.engine is not None
        on_proposal = future.set_result if depth else None
        self.engine.step(seq, committed, depth, verifying, ahead, on_proposal)
        if not depth:
            return None
        if not future.done() and seq.current is not None:  # the job that will answer
            key = id(seq.current)
            self._waiting[key] = (seq.current, future)
            future.add_done_callback(lambda done: self._forget(key, done))
        return future

    def _forget(self, key: int, future: asyncio.Future[Proposal]) -> None:
        if self._waiting.get(key, (None, None))[1] is future:
            del self._waiting[key]

    def close(self, seq: Sequence) -> None:
        self.active_sequences -= 1
        if isinstance(seq, DraftSequence) and self.engine is not None:
            self.engine.close(seq)
        elif isinstance(seq, FeatureSequence):
            seq.proposer.close()

    def _committed(
        self, committed: list[int], position: int, token_ids: list[int], depth: int, verifying: int
    ) -> list[int]:
        if position > len(committed):
            raise InvalidRequest(
                "position",
                f"the draft holds {len(committed)} tokens; cannot continue from {position}",
            )
        if not 0 <= depth <= MAX_SPEC_DEPTH or not 0 <= verifying <= MAX_SPEC_DEPTH:
            raise InvalidRequest("depth", f"depth and verifying must be in [0, {MAX_SPEC_DEPTH}]")
        new_len = position + len(token_ids)
        if new_len == 0 or new_len >= self.max_seq_len:
            raise InvalidRequest(
                "token_ids",
                f"{new_len} committed tokens do not fit the draft's context of {self.max_seq_len}",
            )
        return committed[:position] + token_ids
