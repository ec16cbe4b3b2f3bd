"""Load guard: under concurrency, measure whether speculation still pays, and turn it off when not.

Why. Each request's depth policy (``depth_goodput``) sees its own costs. In a busy batch the
cost of its extra tokens lands mostly on the other sequences (a compute-bound verifier forward
grows with every token in the batch), and where the draft shares hardware with the verifier
(a CPU box, one GPU for both) every draft forward slows the verifier too. No request can see
these costs, so a fleet of individually sensible requests can end up slower than plain decoding.
The guard closes that gap by measuring the outcome instead of modelling it.

How. While two or more adaptive requests are in flight on this router, time is cut into epochs,
and each epoch plays one arm for every adaptive request: ``SPECULATE`` (the request's policy
picks k) or ``PLAIN`` (k = 0). An epoch's score is

    tokens committed in the epoch / integral over the epoch of adaptive requests in flight

the mean speed of a request in flight, prefill, queueing and streaming included. With a fixed
number of clients it is proportional to throughput; with open-loop arrivals below saturation
it is the inverse of the time per output token. Rounds in flight when the arm changes were
partly run under the old arm, so an epoch only starts counting one mean round time after it
begins. Epochs last ``ROUNDS_PER_EPOCH`` mean round times (at least ``MIN_EPOCH_NS``).

Scores are decayed sums per arm and per load bucket (2-3 requests in flight, 4-7, 8-15, ...),
since the answer changes with load. The leading arm is played; speculation leads only when it
is at least ``SPECULATE_MARGIN`` faster (a draw costs draft compute for nothing). The other arm
is replayed every few epochs, more often when the two are close, so that a change in the
workload is noticed. A bucket with no history starts with plain decoding, or with speculation
when speculation leads at some heavier load, then tries the other.

Output is unaffected: k = 0 and k > 0 commit the same tokens (the verifier is authoritative).
Requests with a fixed depth are neither steered nor scored (they are the benchmark's knob), but
count towards the load bucket.

Status: opt-in (``serve router --load-guard``, Helm ``generation.loadGuard``). On the demo
pair on a 2-core CPU it has not paid: throughput with it on ÷ off was 0.91-1.05× in one bench
run and 0.85-0.98× at 4-64 clients in the next, after the draft got cheaper and better and
speculation beat k = 0 at most loads (``BENCHMARKS.md``). A likely bias: a request's first
drafting round opens its draft stream and prefills everything it has so far, so the switching
costs of a speculation epoch that follows plain ones land in that epoch's score.

Non-goals: coordination between router replicas (each measures its own requests; epochs of
different routers overlap and add noise), a model of why speculation lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from specdec.core.depth import DepthPolicy
from specdec.core.rounds import Round
from specdec.serving import metrics

SPECULATE, PLAIN = "speculate", "plain"
MIN_REQUESTS = 2  # in-flight requests from which the guard acts
MIN_EPOCH_NS = 300_000_000
ROUNDS_PER_EPOCH = 6  # epoch length in mean round times
SCORE_DECAY = 0.8  # per scored epoch of the same arm and bucket: a memory of ~5 epochs
SPECULATE_MARGIN = 1.03  # speculation leads only when it is this much faster
EXPLORE_CLOSE = 4  # replay the trailing arm after this many leading epochs when close...
EXPLORE_FAR = 12  # ...and after this many when it trails by more than CLOSE_RATIO
CLOSE_RATIO = 0.85
ROUND_TIME_DECAY = 0.9


def load_bucket(in_flight: int) -> int:
    """1 for 2-3 requests in flight, 2 for 4-7, 3 for 8-15, ...; 0 below MIN_REQUESTS."""
    return 0 if in_flight < MIN_REQUESTS else in_flight.bit_length() - 1


def _other(arm: str) -> str:
    return PLAIN if arm == SPECULATE else SPECULATE


@dataclass
class _ArmScore:
    tokens: float = 0.0
    request_ns: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.tokens / self.request_ns if self.request_ns > 0 else None

    def add(self, tokens: int, request_ns: int) -> None:
        self.tokens = self.tokens * SCORE_DECAY + tokens
        self.request_ns = self.request_ns * SCORE_DECAY + request_ns


@dataclass
class _Bucket:
    scores: dict[str, _ArmScore] = field(
        default_factory=lambda: {SPECULATE: _ArmScore(), PLAIN: _ArmScore()}
    )
    leader_streak: int = 0  # consecutive epochs played on the leader

    @property
    def measured(self) -> bool:
        return all(s.rate is not None for s in self.scores.values())

    def leader(self) -> str:
        """The arm to play in a measured bucket."""
        spec, plain = self.scores[SPECULATE].rate or 0.0, self.scores[PLAIN].rate or 0.0
        return SPECULATE if spec > SPECULATE_MARGIN * plain else PLAIN

    def next_arm(self, first: str) -> str:
        """The arm of the next epoch in this bucket; ``first`` is tried first when neither arm
        has been measured here."""
        unmeasured = [arm for arm in (first, _other(first)) if self.scores[arm].rate is None]
        if unmeasured:
            return unmeasured[0]
        lead = self.leader()
        lead_rate, trail_rate = self.scores[lead].rate or 0.0, self.scores[_other(lead)].rate or 0.0
        close = trail_rate >= CLOSE_RATIO * lead_rate
        if self.leader_streak >= (EXPLORE_CLOSE if close else EXPLORE_FAR):
            self.leader_streak = 0
            return _other(lead)
        self.leader_streak += 1
        return lead


@dataclass
class _Epoch:
    arm: str
    bucket: int
    count_from_ns: int  # rounds ending before this were partly run under the previous arm
    end_ns: int
    tokens: int = 0
    request_ns: int = 0  # integral of adaptive requests in flight since count_from_ns


class LoadGuard:
    """One per router process; called from the event loop only (no locking)."""

    def __init__(self, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        self._clock = clock
        self._in_flight = 0  # every request
        self._adaptive = 0  # requests the guard steers
        self._buckets: dict[int, _Bucket] = {}
        self._epoch: _Epoch | None = None
        self._since_ns = clock()  # last time the in-flight integral was brought up to date
        self._round_ns: float | None = None  # decayed mean round time

    def enter(self, adaptive: bool) -> None:
        """A request started; ``adaptive``: the guard steers its depth."""
        self._advance()
        self._in_flight += 1
        self._adaptive += adaptive

    def leave(self, adaptive: bool) -> None:
        self._advance()
        self._in_flight -= 1
        self._adaptive -= adaptive

    def plain(self) -> bool:
        """Whether a round of an adaptive request starting now runs at k = 0."""
        now = self._advance()
        if self._epoch is None:
            bucket = load_bucket(self._in_flight)
            if bucket == 0:
                return False
            self._epoch = self._open_epoch(bucket, now)
        return self._epoch.arm == PLAIN

    def record(self, tokens: int, round_ns: int | None) -> None:
        """An adaptive request's round just committed ``tokens`` and took ``round_ns`` (None
        for a first round: its prefill says nothing about how long an epoch should be)."""
        now = self._advance()
        if round_ns is not None:
            self._round_ns = (
                float(round_ns)
                if self._round_ns is None
                else ROUND_TIME_DECAY * self._round_ns + (1 - ROUND_TIME_DECAY) * round_ns
            )
        if self._epoch is not None and now >= self._epoch.count_from_ns:
            self._epoch.tokens += tokens

    def _advance(self) -> int:
        """Bring the epoch's in-flight integral up to now; end the epoch when it is over."""
        now = self._clock()
        epoch = self._epoch
        if epoch is not None:
            start, stop = max(self._since_ns, epoch.count_from_ns), min(now, epoch.end_ns)
            if stop > start:
                epoch.request_ns += self._adaptive * (stop - start)
            if now >= epoch.end_ns:
                if epoch.request_ns > 0:
                    self._buckets[epoch.bucket].scores[epoch.arm].add(
                        epoch.tokens, epoch.request_ns
                    )
                self._epoch = None
        self._since_ns = now
        return now

    def _open_epoch(self, bucket: int, now: int) -> _Epoch:
        state = self._buckets.setdefault(bucket, _Bucket())
        round_ns = int(self._round_ns or 0.0)
        length = max(MIN_EPOCH_NS, ROUNDS_PER_EPOCH * round_ns)
        arm = state.next_arm(self._first_arm(bucket))
        metrics.GUARD_EPOCHS.labels(arm).inc()
        return _Epoch(arm, bucket, now + min(round_ns, length // 4), now + length)

    def _first_arm(self, bucket: int) -> str:
        """Where a bucket with no history starts. Load rarely makes speculation pay more, so:
        speculation if it leads at some heavier load measured, plain decoding otherwise (the
        safe side: speculation then has to earn its place in the next epoch)."""
        heavier = [s for b, s in self._buckets.items() if b > bucket and s.measured]
        return SPECULATE if any(s.leader() == SPECULATE for s in heavier) else PLAIN


class GuardedPolicy:
    """An adaptive depth policy the guard may overrule with k = 0 (in its plain epochs); the
    rounds it observes feed the guard's scores."""

    def __init__(self, policy: DepthPolicy, guard: LoadGuard) -> None:
        self.policy = policy
        self.guard = guard
        self.name = policy.name

    def next_depth(self) -> int:
        return 0 if self.guard.plain() else self.policy.next_depth()

    def observe(self, rnd: Round) -> None:
        self.policy.observe(rnd)
        # The prefill round says nothing about how long an epoch should be.
        self.guard.record(len(rnd.token_ids), rnd.round_ns if rnd.index else None)
