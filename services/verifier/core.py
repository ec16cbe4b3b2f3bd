"""The verifier's state: the target model, its slots, parked sessions, and the batch loop.

Every verify step of every open stream goes through one ``BatchLoop``; a batch is one target
forward (``engine.sequence.verify_batch``). Sequences are opened and closed on the loop thread.
A request with a session id parks its slot when it ends, so a follow-up turn whose prompt
extends the conversation prefills only the new tokens; parked slots are evicted least recently
used first when a new sequence needs one.
Non-goals: the wire (``server.py``), preemption of running sequences.
"""

from __future__ import annotations

import concurrent.futures
from collections import OrderedDict
from dataclasses import dataclass

from specdec.core.errors import InvalidRequest
from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.engine.proposer import Proposal
from specdec.engine.rejection import VerifyResult
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import SequenceState, VerifyItem, verify_batch
from specdec.engine.speculative import check_prompt
from specdec.serving.batch_loop import BatchLoop, Timed


@dataclass
class Counters:
    prefill_tokens_total: int = 0
    reused_prefix_tokens_total: int = 0
    active_sequences: int = 0


class VerifierCore:
    """Owns the target ``ModelRunner``; thread-safe through its batch loop."""

    def __init__(self, runner: ModelRunner, max_batch_tokens: int = 8192) -> None:
        self.runner = runner
        self.counters = Counters()
        self._parked: OrderedDict[str, SequenceState] = OrderedDict()
        self.loop: BatchLoop[VerifyItem, VerifyResult] = BatchLoop(
            lambda items: verify_batch(runner, items),
            cost=lambda item: (
                len(item.proposal) + 1 + len(item.seq.committed) - len(item.seq.cached)
            ),
            budget=max_batch_tokens,
            name="verifier-batch",
        )

    # --- called from stream handlers; each returns a future --------------------------------

    def open(
        self, prompt_ids: list[int], params: SamplingParams, seed: int, session_id: str
    ) -> concurrent.futures.Future[tuple[SequenceState, int]]:
        """A new sequence (reusing a parked session's slot when it holds a prefix)."""
        check_prompt(prompt_ids, self.runner.vocab_size, self.runner.max_seq_len)
        params.validate()
        return self.loop.call(lambda: self._open(prompt_ids, params, seed, session_id))

    def verify(
        self, seq: SequenceState, position: int, proposal: Proposal
    ) -> concurrent.futures.Future[Timed[VerifyResult]]:
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
        return self.loop.submit(VerifyItem(seq, proposal))

    def close(self, seq: SequenceState, session_id: str) -> concurrent.futures.Future[None]:
        """End a sequence: park its slot under ``session_id``, or free it."""
        return self.loop.call(lambda: self._close(seq, session_id))

    # --- on the loop thread ----------------------------------------------------------------

    def _open(
        self, prompt_ids: list[int], params: SamplingParams, seed: int, session_id: str
    ) -> tuple[SequenceState, int]:
        parked = self._parked.pop(session_id, None) if session_id else None
        if parked is not None:  # its slot holds an earlier turn: keep what the prompt shares
            seq = SequenceState(parked.slot, list(prompt_ids), params, seed, parked.cached)
        else:
            seq = SequenceState(self._allocate(), list(prompt_ids), params, seed)
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
