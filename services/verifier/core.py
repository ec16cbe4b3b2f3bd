"""The verifier's state: the target model, its slots, parked sessions, and the batches.

Every step of every open stream (the prefill that opens a sequence included) joins a queue; the
scheduler takes what is queued, up to a token budget, as one target forward
(``engine.sequence.verify_batch``). A sequence whose drafts the acceptance rule refuses fails
alone; its batch-mates go on, and so do they when the forward itself raises (the scheduler
runs the batch's halves apart until the culprit fails on its own). Opening and closing
sequences runs on the scheduler between batches. A request with a session id parks its slot
when it ends, so a follow-up turn whose prompt extends the conversation prefills only the new
tokens; parked slots are evicted least recently used first when a new sequence needs one.
Non-goals: the wire (``server.py``), preemption of running sequences.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from specdec.core.errors import InvalidRequest
from specdec.core.limits import MAX_SPEC_DEPTH, check_logprobs, check_prompt
from specdec.engine.proposer import Proposal
from specdec.engine.rejection import VerifyResult
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import SequenceState, VerifyItem, verify_batch
from specdec.replica.scheduler import Scheduler, Timed


@dataclass
class Counters:
    prefill_tokens_total: int = 0
    reused_prefix_tokens_total: int = 0
    active_sequences: int = 0


@dataclass
class _Queued:
    item: VerifyItem
    future: asyncio.Future[Timed[VerifyResult]]
    enqueued_ns: int

    @property
    def cost(self) -> int:
        seq = self.item.seq
        return len(self.item.proposal) + len(seq.committed) - len(seq.cached)


class _VerifyBatch:
    """One target forward over queued steps."""

    def __init__(self, runner: ModelRunner, queued: list[_Queued]) -> None:
        self.runner = runner
        self.queued = queued
        self.cost = sum(q.cost for q in queued)
        self.started_ns = time.perf_counter_ns()
        self.results: list[VerifyResult | Exception] = []

    def run(self) -> None:
        self.results = verify_batch(self.runner, [q.item for q in self.queued])

    def finish(self, elapsed_ns: int) -> None:
        for q, result in zip(self.queued, self.results, strict=True):
            if q.future.done():
                continue  # its stream went away
            if isinstance(result, Exception):
                q.future.set_exception(result)
            else:
                wait = self.started_ns - q.enqueued_ns
                q.future.set_result(Timed(result, wait, elapsed_ns, len(self.queued)))

    def fail(self, exc: Exception) -> None:
        for q in self.queued:
            if not q.future.done():
                q.future.set_exception(exc)

    def split(self) -> list[_VerifyBatch]:
        live = [q for q in self.queued if not q.future.done()]
        half = (len(live) + 1) // 2
        return [_VerifyBatch(self.runner, part) for part in (live[:half], live[half:]) if part]


class VerifierCore:
    """Owns the target ``ModelRunner``; ``start()`` on the event loop before use."""

    def __init__(self, runner: ModelRunner, max_batch_tokens: int = 8192) -> None:
        self.runner = runner
        self.max_batch_tokens = max_batch_tokens
        self.counters = Counters()
        self._parked: OrderedDict[str, SequenceState] = OrderedDict()
        self._queue: deque[_Queued] = deque()
        self.scheduler: Scheduler | None = None

    def start(self) -> None:
        self.scheduler = Scheduler(self._next_batch, "verifier")

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()

    # --- called from stream handlers ----------------------------------------------------------

    def open(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        seed: int,
        session_id: str,
        logprobs: int | None = None,
        hidden_states: bool = False,
    ) -> asyncio.Future[tuple[SequenceState, int]]:
        """A new sequence (reusing a parked session's slot when it holds a prefix) and the
        number of context tokens reused. Its prefill runs with its first ``verify``. With
        ``logprobs`` (alternatives per token), every step returns the committed tokens'; with
        ``hidden_states``, the target's hidden states at the positions it cached (for a feature
        draft; a reused prefix has none: the draft reads zeros there)."""
        check_prompt(prompt_ids, self.runner.vocab_size, self.runner.max_seq_len)
        params.validate()
        check_logprobs(logprobs)
        if hidden_states and not self.runner.returns_hidden:
            raise InvalidRequest("hidden_states", "this verifier cannot return hidden states")
        assert self.scheduler is not None
        return self.scheduler.call(
            lambda: self._open(prompt_ids, params, seed, session_id, logprobs, hidden_states)
        )

    def verify(
        self, seq: SequenceState, position: int, proposal: Proposal
    ) -> asyncio.Future[Timed[VerifyResult]]:
        """Queue one step: feed what the slot lacks, verify ``proposal`` after it."""
        if position != len(seq.committed):
            raise InvalidRequest(
                "position",
                f"the sequence has {len(seq.committed)} committed tokens; the step says {position}",
            )
        if len(proposal) > MAX_SPEC_DEPTH:
            raise InvalidRequest("draft_token_ids", f"at most {MAX_SPEC_DEPTH} per step")
        if position + len(proposal) + 1 > self.runner.max_seq_len:
            raise InvalidRequest(
                "draft_token_ids",
                f"position {position} + {len(proposal)} "
                f"drafts overflow the context of {self.runner.max_seq_len}",
            )
        assert self.scheduler is not None
        future: asyncio.Future[Timed[VerifyResult]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(VerifyItem(seq, proposal), future, time.perf_counter_ns()))
        self.scheduler.wake()
        return future

    def close(self, seq: SequenceState, session_id: str) -> None:
        """End a sequence: park its slot under ``session_id``, or free it."""
        assert self.scheduler is not None
        self.scheduler.call_soon(lambda: self._close(seq, session_id))

    @property
    def queued(self) -> int:
        return len(self._queue)

    # --- on the scheduler ---------------------------------------------------------------------

    def _next_batch(self) -> _VerifyBatch | None:
        taken: list[_Queued] = []
        spent = 0
        while self._queue and (not taken or spent + self._queue[0].cost <= self.max_batch_tokens):
            queued = self._queue.popleft()
            if queued.future.done():  # cancelled: its stream went away
                continue
            taken.append(queued)
            spent += queued.cost
        return _VerifyBatch(self.runner, taken) if taken else None

    def _open(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        seed: int,
        session_id: str,
        logprobs: int | None,
        hidden_states: bool,
    ) -> tuple[SequenceState, int]:
        parked = self._parked.pop(session_id, None) if session_id else None
        if parked is not None:  # its slot holds an earlier turn: keep what the prompt shares
            slot, cached = parked.slot, parked.cached
        else:
            slot, cached = self._allocate(), []
        seq = SequenceState(slot, list(prompt_ids), params, seed, cached, logprobs, hidden_states)
        seq.sync_cache(self.runner)  # rolls the slot back to the longest shared prefix
        reused = len(seq.cached)
        self.counters.reused_prefix_tokens_total += reused
        self.counters.prefill_tokens_total += len(prompt_ids) - reused
        self.counters.active_sequences += 1
        return seq, reused

    def _allocate(self) -> int:
        cache = self.runner.cache
        if cache.slots_free == 0 and self._parked:
            _, evicted = self._parked.popitem(last=False)  # least recently used
            cache.free(evicted.slot)
        return cache.allocate()  # raises OutOfSlots when every slot is active

    def _close(self, seq: SequenceState, session_id: str) -> None:
        self.counters.active_sequences -= 1
        if session_id:
            old = self._parked.pop(session_id, None)
            if old is not None and old.slot != seq.slot:
                self.runner.cache.free(old.slot)
            self._parked[session_id] = seq
        else:
            self.runner.cache.free(seq.slot)

    # --- status ------------------------------------------------------------------------------

    @property
    def parked_sessions(self) -> int:
        return len(self._parked)

    @property
    def slots_free(self) -> int:
        """Free slots, counting parked ones (they are evicted on demand)."""
        return self.runner.cache.slots_free + len(self._parked)

    @property
    def slots_in_use(self) -> int:
        return self.runner.cache.slots_in_use - len(self._parked)
