"""What one speculation round is made of and what it did: the records every layout shares.

A ``Proposal`` is the drafter's guess for the tokens after a committed sequence; a ``Verdict`` is
the verifier's answer (``num_accepted`` leading drafts kept, then one token of its own); a
``Round`` is everything one round did, timings included, and is the one record that the depth
policy, metrics, traces, the load guard, the session store and the benchmark observe. ``Tally``
sums rounds into a request's statistics.

Vocabulary (as in ``specdec.engine.rejection``): ``depth`` is the k asked of the drafter,
``num_proposed`` the draft tokens it returned (prompt lookup may find fewer), ``num_accepted``
the proposed tokens the verifier kept. A round commits ``num_accepted + 1`` tokens, fewer when
a stop token or the budget ends it. Round 0 is the prefill: the verifier decides the first token
from the context alone (depth 0).
Non-goals: torch (the router imports this), the wire format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from specdec.core.limits import MAX_SPEC_DEPTH

# Where a round's proposal came from, with draft-ahead on.
AHEAD_HIT = "hit"  # drafted ahead while the previous round was verified: ready at once
AHEAD_MISS = "miss"  # drafted on demand after the verdict


@dataclass(frozen=True)
class Proposal:
    """Draft tokens for the positions right after a committed sequence."""

    token_ids: Sequence[int]  # [K]
    # The drafter's distribution at each draft position when sampling, in whatever form its
    # verifier takes (engine tensors in process, wire messages in the router); None when greedy.
    probs: Any = None
    ahead: str = ""  # AHEAD_HIT, AHEAD_MISS, or "" when draft-ahead is off

    def __len__(self) -> int:
        return len(self.token_ids)


NO_PROPOSAL = Proposal(())


@dataclass(frozen=True)
class Verdict:
    """The verifier's answer to one proposal (or to the prefill)."""

    num_accepted: int  # leading drafts kept
    next_token_id: int  # its own token after them: recovered, bonus, or plain decoding
    forward_ns: int = 0  # the batched forward this step was part of
    queue_ns: int = 0  # waiting for that batch
    service_ns: int = 0  # the verifier's whole handling of the step, forward and queue included
    batch_size: int = 1  # sequences in that forward
    verifier_active: int = 1  # sequences open on the verifier, as it reported
    verifier_queue: int = 0  # steps waiting there, as it reported
    cached_prompt_tokens: int = 0  # (prefill) context tokens reused from a session's cache
    # When the request asked for logprobs: one per token of the verdict (the accepted drafts,
    # then next_token_id), in the form its port gives (engine records in process, wire messages
    # in the router); empty otherwise.
    logprobs: Sequence[Any] = ()
    # When the drafter reads them (a feature draft): the target's hidden states at the
    # positions this step cached, in the form its port gives (the engine's (rows, end) in
    # process, the wire message in the router); None otherwise.
    features: Any = None


@dataclass(frozen=True)
class Round:
    """One verification of one request, as the speculation loop saw it."""

    index: int  # 0: the prefill, which decides the first token
    position: int  # committed length before the round
    depth: int  # k asked of the drafter
    num_proposed: int  # draft tokens verified, <= depth
    num_accepted: int  # of those, kept by the verifier
    token_ids: tuple[int, ...]  # committed by this round
    finish: str | None  # "stop" (a stop token) or "length" on the last round, else None
    ahead: str  # AHEAD_HIT, AHEAD_MISS, or "" (nothing drafted, or draft-ahead off)
    draft_ns: int  # the round's wait for its proposal
    verify_ns: int  # the verifier's batched forward
    queue_ns: int  # the step's wait for that forward
    service_ns: int  # the verifier's whole handling of the step
    rtt_ns: int  # from sending the step to its verdict (service + network + serialization)
    round_ns: int  # wall time from the previous verdict to this one (the whole critical path)
    verifier_active: int
    verifier_queue: int
    batch_size: int = 1
    cached_prompt_tokens: int = 0
    logprobs: tuple[Any, ...] = ()  # one per token of token_ids when asked for (see Verdict)

    def __post_init__(self) -> None:
        if not 0 <= self.num_accepted <= self.num_proposed <= self.depth <= MAX_SPEC_DEPTH:
            raise ValueError(f"need 0 <= num_accepted <= num_proposed <= depth <= 16: {self}")
        times = (self.draft_ns, self.verify_ns, self.queue_ns, self.service_ns, self.rtt_ns)
        if (
            min(times) < 0
            or self.round_ns < 0
            or min(self.verifier_active, self.verifier_queue) < 0
        ):
            raise ValueError(f"times and loads must be >= 0: {self}")

    @property
    def network_ns(self) -> int:
        """The round trip minus the verifier's service time: transport and serialization."""
        return max(self.rtt_ns - self.service_ns, 0)

    @property
    def router_ns(self) -> int:
        """The critical path's rest: the loop's own work between verdict and next step."""
        return max(self.round_ns - self.rtt_ns - self.draft_ns, 0)

    @property
    def full(self) -> bool:
        """Every proposed draft was accepted (the verifier's token is a bonus token)."""
        return self.num_proposed > 0 and self.num_accepted == self.num_proposed


@dataclass
class Tally:
    """A request's rounds summed up (several requests' too, with ``merge``)."""

    rounds: int = 0  # verifications, the prefill included
    draft_tokens: int = 0
    accepted_tokens: int = 0
    rejections: int = 0  # rounds that rejected a draft
    output_tokens: int = 0
    depths: list[int] = field(default_factory=list)  # k per round after the prefill
    proposed_per_position: list[int] = field(default_factory=lambda: [0] * MAX_SPEC_DEPTH)
    accepted_per_position: list[int] = field(default_factory=lambda: [0] * MAX_SPEC_DEPTH)
    ahead_hits: int = 0
    ahead_misses: int = 0
    ahead_hits_after_full: int = 0
    ahead_rounds_after_full: int = 0
    ahead_hits_after_rejection: list[int] = field(default_factory=lambda: [0] * MAX_SPEC_DEPTH)
    ahead_rounds_after_rejection: list[int] = field(default_factory=lambda: [0] * MAX_SPEC_DEPTH)
    draft_ns: int = 0
    verify_forward_ns: int = 0
    verify_queue_ns: int = 0
    verify_service_ns: int = 0
    network_ns: int = 0
    router_ns: int = 0
    cached_prompt_tokens: int = 0
    _previous: Round | None = field(default=None, repr=False, compare=False)

    def add(self, rnd: Round) -> None:
        """Count one round (rounds of one request, in order)."""
        prev, self._previous = self._previous, rnd
        self.rounds += 1
        self.output_tokens += len(rnd.token_ids)
        if rnd.index == 0:
            self.cached_prompt_tokens = rnd.cached_prompt_tokens
        else:
            self.depths.append(rnd.depth)
        self.draft_tokens += rnd.num_proposed
        self.accepted_tokens += rnd.num_accepted
        self.rejections += rnd.num_accepted < rnd.num_proposed
        for i in range(rnd.num_proposed):
            self.proposed_per_position[i] += 1
            self.accepted_per_position[i] += int(i < rnd.num_accepted)
        if rnd.ahead:
            self._count_ahead(rnd, prev)
        self.draft_ns += rnd.draft_ns
        self.verify_forward_ns += rnd.verify_ns
        self.verify_queue_ns += rnd.queue_ns
        self.verify_service_ns += rnd.service_ns
        self.network_ns += rnd.network_ns
        self.router_ns += rnd.router_ns

    def _count_ahead(self, rnd: Round, prev: Round | None) -> None:
        hit = rnd.ahead == AHEAD_HIT
        self.ahead_hits += hit
        self.ahead_misses += not hit
        if prev is None or prev.num_proposed == 0:
            return  # after the prefill or a plain round: no draft outcome to speak of
        if prev.full:
            self.ahead_hits_after_full += hit
            self.ahead_rounds_after_full += 1
        else:
            self.ahead_hits_after_rejection[prev.num_accepted] += hit
            self.ahead_rounds_after_rejection[prev.num_accepted] += 1

    def merge(self, other: Tally) -> None:
        """Add another request's tally (the benchmark's sums over requests)."""
        for name, value in vars(other).items():
            if name.startswith("_"):
                continue
            mine = getattr(self, name)
            if isinstance(value, list) and name == "depths":
                mine.extend(value)
            elif isinstance(value, list):
                setattr(self, name, [a + b for a, b in zip(mine, value, strict=True)])
            else:
                setattr(self, name, mine + value)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def alpha(self) -> float | None:
        """Per-draft acceptance rate of the i.i.d. model (Leviathan et al., arXiv 2211.17192),
        by maximum likelihood: each round is a run of trials up to the first rejection."""
        tried = self.accepted_tokens + self.rejections
        return self.accepted_tokens / tried if tried else None

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens committed per round, the verifier's own token included."""
        return self.output_tokens / self.rounds if self.rounds else 0.0

    @property
    def ahead_hit_rate(self) -> float:
        tried = self.ahead_hits + self.ahead_misses
        return self.ahead_hits / tried if tried else 0.0
