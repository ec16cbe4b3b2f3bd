"""The speculation loop's two ports over the engine, in this process (no network).

``EngineVerifier`` owns one KV-cache slot of the target runner and answers each step with one
forward (``sequence.verify_batch`` over a single sequence), its verdicts carrying the target's
hidden states when a feature draft reads them; ``EngineDrafter`` wraps any
``Proposer``; ``AheadDrafter`` runs a draft model with draft-ahead (``draft_engine``), keeping
what it drafts ahead in a speculation cache, exactly as the router does with a draft replica.
In one process the ahead work cannot overlap verification, so it only costs time: it is here to
check that proposals taken from the cache change no output. None of the ports ever waits on
anything, so ``run_now`` drives the loop's coroutines without an event loop.
Non-goals: batching several requests (the services do that).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, TypeVar

from specdec.core.rounds import AHEAD_HIT, AHEAD_MISS, Proposal, Verdict
from specdec.core.spec_cache import SpeculationCache
from specdec.engine.draft_engine import Ahead, DraftEngine, DraftSequence
from specdec.engine.proposer import EMPTY_PROPOSAL, Proposer
from specdec.engine.proposer import Proposal as Drafts
from specdec.engine.proposer_draft import DEFAULT_TOP_M, DEFAULT_TOP_MASS
from specdec.engine.proposer_feature import FeatureDraftProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import SequenceState, VerifyItem, verify_batch

T = TypeVar("T")


class _Done(Awaitable[T]):
    """An awaitable that already holds its value (the engine answered synchronously)."""

    def __init__(self, value: T) -> None:
        self.value = value

    def __await__(self):  # type: ignore[no-untyped-def]
        return self.value
        yield  # pragma: no cover (makes this a generator)


class EngineVerifier:
    """The target model verifying one sequence, one forward per step."""

    def __init__(
        self,
        runner: ModelRunner,
        params: SamplingParams,
        seed: int,
        logprobs: int | None = None,  # alternatives per token's logprob; None: no logprobs
        features: bool = False,  # verdicts carry the target's hidden states (feature drafts)
    ) -> None:
        self.runner = runner
        self.params = params
        self.seed = seed
        self.logprobs = logprobs
        self.features = features
        self.seq: SequenceState | None = None

    async def open(self, context: Sequence[int]) -> Awaitable[Verdict]:
        slot = self.runner.cache.allocate()
        self.seq = SequenceState(
            slot, list(context), self.params, self.seed, [], self.logprobs, self.features
        )
        return _Done(self._step(EMPTY_PROPOSAL))

    async def verify(self, committed: Sequence[int], proposal: Proposal) -> Awaitable[Verdict]:
        assert self.seq is not None and len(self.seq.committed) == len(committed)
        drafts = (
            proposal.probs
            if isinstance(proposal.probs, Drafts)
            else Drafts(list(proposal.token_ids))
        )
        return _Done(self._step(drafts))

    def _step(self, drafts: Drafts) -> Verdict:
        assert self.seq is not None
        start = time.perf_counter_ns()
        result = verify_batch(self.runner, [VerifyItem(self.seq, drafts)])[0]
        if isinstance(result, Exception):
            raise result
        features = None
        if result.features is not None:
            features = (result.features, len(self.seq.cached))
        elapsed = time.perf_counter_ns() - start
        return Verdict(
            result.num_accepted,
            result.next_token_id,
            elapsed,
            0,
            elapsed,
            logprobs=result.logprobs,
            features=features,
        )

    def close(self) -> None:
        if self.seq is not None:
            self.runner.cache.free(self.seq.slot)
            self.seq = None


class EngineDrafter:
    """Any ``Proposer`` (a draft model, prompt lookup) behind the drafter port."""

    available = True

    def __init__(self, proposer: Proposer, params: SamplingParams, seed: int) -> None:
        self.proposer = proposer
        self.params = params
        self.seed = seed

    async def start(self, context: Sequence[int]) -> None:
        return None  # the proposer prefills at its first proposal

    async def propose(self, committed: Sequence[int], k: int) -> Proposal:
        return _wrap(self.proposer.propose(committed, k, self.params, self.seed))

    async def verifying(self, committed: Sequence[int], proposal: Proposal) -> None:
        return None

    def observe(self, verdict: Verdict) -> None:
        if verdict.features is not None and isinstance(self.proposer, FeatureDraftProposer):
            self.proposer.take_features(*verdict.features)


class AheadDrafter:
    """A draft model with draft-ahead behind the drafter port (one sequence)."""

    available = True

    def __init__(
        self,
        runner: ModelRunner,
        params: SamplingParams,
        seed: int,
        ahead: Ahead,
        vocab_limit: int | None = None,
        top_m: int = DEFAULT_TOP_M,
        top_mass: float = DEFAULT_TOP_MASS,
    ) -> None:
        self.engine = DraftEngine(runner, vocab_limit or runner.vocab_size, top_m, top_mass)
        self.params, self.seed, self.ahead = params, seed, ahead
        self.cache = SpeculationCache()
        self.seq: DraftSequence | None = None

    async def start(self, context: Sequence[int]) -> None:
        self.seq = self.engine.open(list(context), self.params, self.seed, self.ahead, self._file)
        self.engine.drain()

    async def propose(self, committed: Sequence[int], k: int) -> Proposal:
        hit = self.cache.take(committed)
        if hit is not None and len(hit):
            probs = hit.probs.head(k) if isinstance(hit.probs, Drafts) else None
            return Proposal(hit.token_ids[:k], probs, ahead=AHEAD_HIT)
        assert self.seq is not None
        answers: list[Drafts] = []
        self.engine.step(self.seq, list(committed), k, 0, self._ahead(k), answers.append)
        self.engine.drain()  # the proposal, then (no overlap here) the drafts ahead of it
        return _wrap(answers[0], AHEAD_MISS)

    def observe(self, verdict: Verdict) -> None:
        return None

    async def verifying(self, committed: Sequence[int], proposal: Proposal) -> None:
        if proposal.ahead == AHEAD_HIT:
            assert self.seq is not None
            k = len(proposal)
            self.engine.step(self.seq, list(committed), 0, k, self._ahead(k))
            self.engine.drain()

    def close(self) -> None:
        if self.seq is not None:
            self.engine.close(self.seq)
            self.seq = None

    def _ahead(self, k: int) -> Ahead:
        return Ahead(self.ahead.width, max(k, 1))

    def _file(self, base: int, results: list[tuple[list[int], Drafts]]) -> None:
        for context, drafts in results:
            self.cache.put(base, context, _wrap(drafts))


def _wrap(drafts: Drafts, ahead: str = "") -> Proposal:
    """The engine's proposal as the loop's. When sampling, the engine proposal itself carries
    the probabilities (the in-process verifier takes it whole)."""
    probs = drafts if drafts.draft_sparse_ids is not None else None
    return Proposal(drafts.draft_token_ids, probs, ahead=ahead)


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the in-process ports answer at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("run_now: the coroutine waited for something")
