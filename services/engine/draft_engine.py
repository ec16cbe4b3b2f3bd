"""A draft model drafting for many sequences: on demand, and ahead of the verifier.

Drafting a sequence's caller waits for is *on demand*: those cursors advance first, all of them
together, one batched forward per position, and the caller gets its tokens as soon as they are
drafted. *Ahead* work is draft-ahead (``draft_ahead.py``): while the verifier checks a proposal,
the likeliest outcomes of that check are drafted on, each in a branch slot, and each branch's
proposal goes to the sequence's sink as soon as it is drafted. Ahead work advances one forward
at a time, only when no on-demand work waits, in waves by rank: every sequence's likeliest
outcome first, then ranks 1-2, 3-6, 7-14 (a forward costs more with every row it carries, so
the likeliest proposals are ready soonest). A sequence's next step drops whatever of it has
gone stale.

When a step reveals the committed sequence, a branch drafted for exactly that state is adopted:
its slot becomes the sequence's, and its proposal is already there.

``next_forward`` hands out the next unit of work: the draft service's scheduler runs them on its
event loop; in process, ``drain`` runs them at once. Nothing here waits or locks: one thread
calls in.
Non-goals: prompt lookup (no model: the draft service answers it directly), the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from specdec.core.errors import InvalidRequest, OutOfSlots
from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.engine.draft_ahead import Acceptance, fork, likely_outcomes
from specdec.engine.drafting import DraftCursor, advance
from specdec.engine.proposer import Proposal
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import SequenceState

TOPS = 4  # alternatives kept per draft position for ranking outcomes
MAX_AHEAD_WIDTH = 16  # outcomes drafted ahead per verification, at most
AHEAD_BATCH = 128  # ahead cursors per forward


@dataclass(frozen=True)
class Ahead:
    """How far a sequence wants the draft to work ahead: ``width`` outcomes of each
    verification, ``depth`` tokens drafted for each."""

    width: int = 0
    depth: int = 0

    def check(self) -> None:
        if not 0 <= self.width <= MAX_AHEAD_WIDTH:
            raise InvalidRequest("ahead.width", f"must be in [0, {MAX_AHEAD_WIDTH}]")
        if self.width and not 1 <= self.depth <= MAX_SPEC_DEPTH:
            raise InvalidRequest("ahead.depth", f"must be in [1, {MAX_SPEC_DEPTH}]")


NO_AHEAD = Ahead()

# Told when a sequence's speculated proposals are ready: the committed length they branch from,
# and for each outcome its tokens past that length and its proposal.
AheadSink = Callable[[int, list[tuple[list[int], Proposal]]], None]


Callback = Callable[[DraftCursor], None]


@dataclass
class _Job:
    """A cursor, what to do once its drafts are there and once it is done (its last forward
    reads the distribution after the drafts, which ranking the next outcomes needs)."""

    cursor: DraftCursor
    on_done: Callback | None = None
    on_drafted: Callback | None = None
    wave: int = 0  # ahead work runs in waves, likeliest first
    cancelled: bool = False  # dropped: never advanced again, no callback runs
    finished: bool = False  # on_done ran

    @property
    def active(self) -> bool:
        return not (self.cancelled or self.finished)

    def settle(self) -> None:
        """Run the callbacks that are due (each once)."""
        if not self.active:
            return
        if self.on_drafted is not None and self.cursor.drafted:
            callback, self.on_drafted = self.on_drafted, None
            callback(self.cursor)
        if self.cursor.done and self.active:
            self.finished = True
            if self.on_done is not None:
                self.on_done(self.cursor)


def wave(rank: int) -> int:
    """Ahead work's wave of the outcome ranked ``rank`` (0: likeliest): 0, 1-2, 3-6, 7-14."""
    return (rank + 1).bit_length() - 1


@dataclass
class _Branch:
    seq: SequenceState
    job: _Job


@dataclass(eq=False)
class DraftSequence:
    """One sequence the draft model serves."""

    main: SequenceState  # the committed sequence's slot (and the drafts after it)
    sink: AheadSink | None = None
    ahead: Ahead = NO_AHEAD
    current: _Job | None = None  # the proposal for ``main.committed`` (done or in progress)
    base: int = 0  # committed length the branches continue
    verifying: list[int] = field(default_factory=list)  # the drafts being verified after base
    acceptance: Acceptance = field(default_factory=Acceptance)
    branches: dict[tuple[int, ...], _Branch] = field(default_factory=dict)
    spare: list[SequenceState] = field(default_factory=list)  # branch slots not in use
    closed: bool = False

    @property
    def committed(self) -> list[int]:
        return self.main.committed


class Forward:
    """One batched forward over some cursors: the unit of work handed out."""

    def __init__(self, engine: DraftEngine, jobs: list[_Job]) -> None:
        self.engine, self.jobs = engine, jobs
        self.cost = len(jobs)

    def run(self) -> None:
        e = self.engine
        advance(e.runner, [j.cursor for j in self.jobs], e.vocab_limit, e.top_m, e.top_mass)

    def finish(self, elapsed_ns: int = 0) -> None:
        for job in self.jobs:
            job.settle()
        self.engine._prune()

    def fail(self, exc: Exception) -> None:
        for job in self.jobs:
            job.cancelled = True  # their callers time out and go on without drafts
        self.engine._prune()


class DraftEngine:
    """Owns the draft ``ModelRunner``'s slots and work."""

    def __init__(self, runner: ModelRunner, vocab_limit: int, top_m: int, top_mass: float) -> None:
        self.runner = runner
        self.vocab_limit = vocab_limit
        self.top_m, self.top_mass = top_m, top_mass
        self.on_work: Callable[[], None] = lambda: None  # called when work is queued
        self._on_demand: list[_Job] = []
        self._ahead: list[_Job] = []
        self._sequences: set[DraftSequence] = set()

    @property
    def queued(self) -> int:
        """Cursors someone waits for."""
        return len(self._on_demand)

    def open(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        seed: int,
        ahead: Ahead = NO_AHEAD,
        sink: AheadSink | None = None,
    ) -> DraftSequence:
        """A new sequence. With draft-ahead on, its prefill starts now and proposals for the
        likeliest first tokens (the verifier's prefill decides the first token) follow through
        ``sink``."""
        ahead.check()
        slot = self._allocate()  # raises OutOfSlots
        dseq = DraftSequence(SequenceState(slot, list(prompt_ids), params, seed), sink, ahead)
        self._sequences.add(dseq)
        if ahead.width:
            self._draft(dseq, 0, None, lambda cursor: self._speculate(dseq, cursor, 0))
        return dseq

    def step(
        self,
        dseq: DraftSequence,
        committed: list[int],
        depth: int,
        verifying: int,
        ahead: Ahead,
        on_proposal: Callable[[Proposal], None] | None = None,
    ) -> None:
        """The committed sequence is now ``committed``. With ``depth``: ``on_proposal`` gets
        ``depth`` draft tokens for it (the caller verifies them next). Without: the caller
        verifies the first ``verifying`` drafts of the proposal that was sent ahead for it.
        Either way, draft-ahead then works on that verification's outcomes."""
        ahead.check()
        dseq.ahead = ahead
        if dseq.verifying and committed[: dseq.base] == dseq.committed[: dseq.base]:
            dseq.acceptance.observe(dseq.verifying, committed[dseq.base :])
        dseq.verifying = []
        if dseq.current is not None:  # drafting for the earlier state: stale now (and two
            dseq.current.cancelled = True  # cursors must never feed one slot)
        branch = self._take_branch(dseq, committed)
        self._drop_branches(dseq)  # the others are stale now
        if branch is None:
            dseq.main.committed = committed
            dseq.current = None
        k = depth or verifying

        def answer(cursor: DraftCursor) -> None:
            if on_proposal is not None:
                on_proposal(cursor.proposal().head(k))

        def speculate(cursor: DraftCursor) -> None:
            self._speculate(dseq, cursor, k)

        job = dseq.current
        if job is None or (job.cursor.drafted and len(job.cursor.token_ids) < k):
            self._draft(dseq, k, answer, speculate)
            return
        # A branch drafted for this very state: answer from it (now, or once it has its
        # drafts), and speculate once it is done; what it still lacks runs on demand.
        if job.finished:
            answer(job.cursor)
            speculate(job.cursor)
            return
        job.on_drafted, job.on_done = answer, speculate
        job.settle()
        if job.active and job in self._ahead:
            self._ahead.remove(job)
            self._on_demand.append(job)
            self.on_work()

    def close(self, dseq: DraftSequence) -> None:
        """Free the sequence's slots (its own and its branches')."""
        if dseq.closed:
            return
        dseq.closed = True
        self._drop_branches(dseq)
        if dseq.current is not None:
            dseq.current.cancelled = True
        for seq in (dseq.main, *dseq.spare):
            self.runner.cache.free(seq.slot)
        dseq.spare.clear()
        self._sequences.discard(dseq)
        self._prune()

    def next_forward(self) -> Forward | None:
        """The next unit of work: on-demand cursors first, else the earliest wave of ahead
        ones; None when idle."""
        self._prune()
        jobs = self._on_demand
        if not jobs and self._ahead:
            first = min(job.wave for job in self._ahead)
            jobs = [job for job in self._ahead if job.wave == first][:AHEAD_BATCH]
        return Forward(self, jobs) if jobs else None

    def drain(self) -> None:
        """Run every queued forward now (in process, where nothing else runs meanwhile)."""
        while (forward := self.next_forward()) is not None:
            forward.run()
            forward.finish()

    # --- inside -------------------------------------------------------------------------------

    def _draft(
        self,
        dseq: DraftSequence,
        depth: int,
        on_drafted: Callback | None,
        on_done: Callback | None,
    ) -> None:
        """Draft ``depth`` tokens for ``dseq.main`` on demand."""
        cursor = DraftCursor(dseq.main, depth, TOPS if dseq.ahead.width else 0)
        cursor.plan(self.runner)
        dseq.current = _Job(cursor, on_done, on_drafted)
        self._on_demand.append(dseq.current)
        self.on_work()

    def _speculate(self, dseq: DraftSequence, drafted: DraftCursor, k: int) -> None:
        """Branches for the likeliest outcomes of verifying the first ``k`` tokens of
        ``drafted`` (which ``dseq.main`` holds), drafted ahead for the sink."""
        self._drop_branches(dseq)
        if dseq.closed or not dseq.ahead.width or dseq.sink is None:
            return
        state = dseq.committed
        dseq.base = len(state)
        drafts = drafted.token_ids[:k]
        dseq.verifying = drafts
        outcomes = likely_outcomes(
            drafts,
            drafted.token_probs[:k],
            drafted.top_ids[: k + 1],
            drafted.top_probs[: k + 1],
            dseq.ahead.width,
            dseq.acceptance.rate,
        )
        sink, base = dseq.sink, dseq.base
        for rank, outcome in enumerate(outcomes):
            context = drafts[: outcome.num_accepted] + [outcome.next_token_id]
            if len(state) + len(context) >= self.runner.max_seq_len:
                continue
            seq = self._spare(dseq)
            if seq is None:
                break  # out of slots: fewer branches
            fork(self.runner, dseq.main, seq, len(state) + outcome.num_accepted, state + context)
            cursor = DraftCursor(seq, dseq.ahead.depth, TOPS)
            cursor.plan(self.runner)
            send = _sender(sink, base, context)
            job = _Job(cursor, on_drafted=send, wave=wave(rank))
            dseq.branches[tuple(context)] = _Branch(seq, job)
            self._ahead.append(job)
        if dseq.branches:
            self.on_work()

    def _take_branch(self, dseq: DraftSequence, committed: list[int]) -> _Branch | None:
        """Adopt the branch drafted for exactly ``committed``, if there is one."""
        if not dseq.branches or len(committed) <= dseq.base:
            return None
        branch = dseq.branches.pop(tuple(committed[dseq.base :]), None)
        if branch is None or branch.seq.committed != committed:
            return None
        dseq.spare.append(dseq.main)
        dseq.main = branch.seq
        dseq.current = branch.job
        return branch

    def _drop_branches(self, dseq: DraftSequence) -> None:
        for branch in dseq.branches.values():
            branch.job.cancelled = True
            dseq.spare.append(branch.seq)
        dseq.branches.clear()

    def _spare(self, dseq: DraftSequence) -> SequenceState | None:
        """A slot for a branch: one of the sequence's spares (its slot then lacks only what
        changed since its last branch), or a free one; never another sequence's."""
        if dseq.spare:
            return dseq.spare.pop()
        try:
            slot = self.runner.cache.allocate()
        except OutOfSlots:
            return None
        return SequenceState(slot, [], dseq.main.params, dseq.main.seed)

    def _allocate(self) -> int:
        """A slot for a new sequence; when none is free, take one from other sequences'
        draft-ahead (spare slots first, then running branches)."""
        cache = self.runner.cache
        if cache.slots_free == 0:
            for reclaim in (False, True):
                for other in self._sequences:
                    if reclaim:
                        self._drop_branches(other)
                    if other.spare:
                        cache.free(other.spare.pop().slot)
                        self._prune()
                        return cache.allocate()
        return cache.allocate()

    def _prune(self) -> None:
        self._on_demand = [j for j in self._on_demand if j.active]
        self._ahead = [j for j in self._ahead if j.active]


def _sender(sink: AheadSink, base: int, context: list[int]) -> Callback:
    def send(cursor: DraftCursor) -> None:
        sink(base, [(context, cursor.proposal())])

    return send
