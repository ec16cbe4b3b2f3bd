"""Speculation-depth policies: how many draft tokens (k) the router asks for, round by round.

The router keeps one policy object per request. Each round it calls ``next_depth()``, runs the
round (draft k tokens, verify them), then reports what happened with ``observe()``. k = 0 is a
plain decoding step on the verifier (no draft call), and is the right answer when drafts are
rarely accepted, drafting is slow, or the verifier is saturated.

Vocabulary (as in ``specdec.engine.rejection``): ``depth`` is the k asked for, ``num_proposed``
the draft tokens actually received (a prompt-lookup proposer may find fewer), ``num_accepted``
the proposed tokens the verifier kept. A round always commits ``num_accepted + 1`` tokens (the
verifier adds a recovered or bonus token).

Policies, one module each, behind the ``DepthPolicy`` protocol:

- ``fixed``     (here): the same k every round; the baseline and the benchmark knob.
- ``heuristic`` (``depth_heuristic``): grow k after a fully accepted round, shrink after a
  rejection.
- ``goodput``   (``depth_goodput``, the default): the k that maximises this request's expected
  tokens per second, from its measured acceptance, draft time, verify time and verifier load.

Adding a policy: a new module with a class that has ``name``, ``next_depth`` and ``observe``,
and one entry in ``POLICIES``. Policies are pure Python (the router's container has no torch),
keep all state in the object (no globals) and are deterministic given the same observations.

Non-goals: sharing what one request learnt with another; choosing replicas (the router does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

from specdec.core.limits import MAX_SPEC_DEPTH as MAX_DEPTH
from specdec.router.depth_goodput import GoodputDepth
from specdec.router.depth_heuristic import HeuristicDepth

DEFAULT_POLICY = "goodput"


@dataclass(frozen=True)
class RoundObservation:
    """What one speculation round of one request did, as the router saw it."""

    depth: int  # k asked of the draft
    num_proposed: int  # draft tokens received, <= depth
    num_accepted: int  # proposed tokens the verifier kept, <= num_proposed
    draft_ns: int  # wall time of the draft call for this round; 0 when depth = 0
    verify_ns: int  # verifier forward time for this round, as the verifier reported it
    round_ns: int  # router wall time of the whole round, network included
    verifier_active: int  # sequences in the verifier's batch, as it reported
    verifier_queue: int  # requests waiting at the verifier, as it reported

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"RoundObservation.{f.name} must be >= 0, got {self}")
        if not self.num_accepted <= self.num_proposed <= self.depth:
            raise ValueError(f"need num_accepted <= num_proposed <= depth, got {self}")


class DepthPolicy(Protocol):
    """Chooses k for the next round of one request, from that request's past rounds."""

    name: str

    def next_depth(self) -> int:
        """k for the next round, in [0, max_depth]. Calling it twice without ``observe`` gives
        the same answer."""
        ...

    def observe(self, obs: RoundObservation) -> None:
        """Learn from the round just finished."""
        ...


class FixedDepth:
    """The same k every round."""

    name: str = "fixed"

    def __init__(self, depth: int) -> None:
        if not 0 <= depth <= MAX_DEPTH:
            raise ValueError(f"fixed_depth must be in [0, {MAX_DEPTH}], got {depth}")
        self.depth = depth

    def next_depth(self) -> int:
        return self.depth

    def observe(self, obs: RoundObservation) -> None:
        pass


def _fixed(*, fixed_depth: int, max_depth: int) -> DepthPolicy:
    if not 0 <= fixed_depth <= max_depth:
        raise ValueError(f"fixed_depth must be in [0, max_depth={max_depth}], got {fixed_depth}")
    return FixedDepth(fixed_depth)


def _heuristic(*, fixed_depth: int, max_depth: int) -> DepthPolicy:
    return HeuristicDepth(max_depth)


def _goodput(*, fixed_depth: int, max_depth: int) -> DepthPolicy:
    return GoodputDepth(max_depth)


# name -> factory; every factory takes the keyword arguments of ``make_policy``.
POLICIES: dict[str, Callable[..., DepthPolicy]] = {
    "fixed": _fixed,
    "heuristic": _heuristic,
    "goodput": _goodput,
}


def make_policy(name: str, *, fixed_depth: int = 4, max_depth: int = 8) -> DepthPolicy:
    """A fresh policy for one request. ``fixed_depth`` is used by "fixed" only; ``max_depth``
    bounds every policy. Raises ``ValueError`` (naming the bad argument) on bad input."""
    factory = POLICIES.get(name)
    if factory is None:
        raise ValueError(f"unknown depth policy {name!r}; valid names: {', '.join(POLICIES)}")
    if not 1 <= max_depth <= MAX_DEPTH:
        raise ValueError(f"max_depth must be in [1, {MAX_DEPTH}], got {max_depth}")
    return factory(fixed_depth=fixed_depth, max_depth=max_depth)
