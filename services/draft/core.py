"""The draft replica's state: the draft model, its slots, and the batch loop.

Model drafting for every open stream goes through one ``BatchLoop``: a batch drafts k tokens
for many sequences at once (``engine.sequence.draft_batch``). Prompt-lookup drafting needs no
model and answers at once. Sequences are opened and closed on the loop thread.
Non-goals: the wire (``server.py``).
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass

from specdec.core.errors import InvalidRequest
from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.engine.proposer import Proposal
from specdec.engine.proposer_draft import DEFAULT_TOP_M, DEFAULT_TOP_MASS
from specdec.engine.proposer_ngram import NgramProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import DraftItem, SequenceState, draft_batch
from specdec.serving.batch_loop import BatchLoop, Timed

NO_SLOT = -1
_NGRAM = NgramProposer()


@dataclass
class DraftSequence:
    state: SequenceState  # slot NO_SLOT for prompt lookup
    ngram: bool


class DraftCore:
    """Owns the draft ``ModelRunner`` (optional: a replica may serve prompt lookup only)."""

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
        self.vocab_limit = vocab_limit or (runner.vocab_size if runner else 1 << 31)
        self.active_sequences = 0
        self.loop: BatchLoop[DraftItem, Proposal] | None = None
        if runner is not None:
            self.loop = BatchLoop(
                lambda items: draft_batch(runner, items, self.vocab_limit, top_m, top_mass),
                name="draft-batch",
            )

    def open(
        self, prompt_ids: list[int], params: SamplingParams, seed: int, ngram: bool
    ) -> concurrent.futures.Future[DraftSequence]:
        params.validate()
        if ngram or self.loop is None:
            if not ngram:
                raise InvalidRequest("method", "this draft replica has no model; use n-gram")
            future: concurrent.futures.Future[DraftSequence] = concurrent.futures.Future()
            self.active_sequences += 1
            future.set_result(DraftSequence(SequenceState(NO_SLOT, prompt_ids, params, seed), True))
            return future
        assert self.runner is not None
        runner = self.runner

        def open_on_loop() -> DraftSequence:
            slot = runner.cache.allocate()
            self.active_sequences += 1
            return DraftSequence(SequenceState(slot, prompt_ids, params, seed), False)

        return self.loop.call(open_on_loop)

    def propose(
        self, seq: DraftSequence, position: int, token_ids: list[int], depth: int
    ) -> concurrent.futures.Future[Timed[Proposal]]:
        committed = seq.state.committed
        if position > len(committed):
            raise InvalidRequest(
                "position",
                f"the draft holds {len(committed)} tokens; cannot continue from {position}",
            )
        if not 1 <= depth <= MAX_SPEC_DEPTH:
            raise InvalidRequest("depth", f"must be in [1, {MAX_SPEC_DEPTH}], got {depth}")
        new_len = position + len(token_ids)
        if new_len == 0 or new_len >= self.max_seq_len:
            raise InvalidRequest(
                "token_ids",
                f"{new_len} committed tokens do not fit the draft's context of {self.max_seq_len}",
            )
        seq.state.committed = committed[:position] + token_ids
        if seq.ngram or self.loop is None:
            state = seq.state
            return _now(lambda: _NGRAM.propose(state.committed, depth, state.params, state.seed))
        return self.loop.submit(DraftItem(seq.state, depth))

    def close(self, seq: DraftSequence) -> None:
        self.active_sequences -= 1
        if seq.state.slot != NO_SLOT and self.loop is not None and self.runner is not None:
            runner, slot = self.runner, seq.state.slot
            self.loop.call(lambda: runner.cache.free(slot))


def _now(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` here and wrap its result like a batch-loop result."""
    future: concurrent.futures.Future[Timed[Proposal]] = concurrent.futures.Future()
    start = time.perf_counter_ns()
    try:
        result = fn()
        future.set_result(Timed(result, 0, time.perf_counter_ns() - start, 1))
    except Exception as exc:
        future.set_exception(exc)
    return future
