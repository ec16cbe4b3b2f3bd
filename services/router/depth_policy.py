"""Speculation-depth policies by name: how many draft tokens (k) a request asks for, per round.

The protocol (``DepthPolicy``: ``next_depth()``, then ``observe(round)`` with the loop's one
``Round`` record) and ``FixedDepth`` live in ``specdec.core.depth``; the adaptive policies are
the router's, one module each:

- ``fixed``     the same k every round; the baseline and the benchmark knob.
- ``heuristic`` (``depth_heuristic``): grow k after a fully accepted round, shrink after a
  rejection.
- ``goodput``   (``depth_goodput``, the default): the k that maximises this request's expected
  tokens per second, from its measured acceptance, draft time (drafts that came from draft-ahead
  cost nothing on the critical path, and the estimate learns that), verify time and load.

Adding a policy: a new module with a class that has ``name``, ``next_depth`` and ``observe``,
and one entry in ``POLICIES``. Policies are pure Python (the router's container has no torch),
keep all state in the object (no globals) and are deterministic given the same observations.

Non-goals: sharing what one request learnt with another; choosing replicas (the router does).
"""

from __future__ import annotations

from collections.abc import Callable

from specdec.core.depth import DepthPolicy, FixedDepth
from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.router.depth_goodput import GoodputDepth
from specdec.router.depth_heuristic import HeuristicDepth

DEFAULT_POLICY = "goodput"


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
    if not 1 <= max_depth <= MAX_SPEC_DEPTH:
        raise ValueError(f"max_depth must be in [1, {MAX_SPEC_DEPTH}], got {max_depth}")
    return factory(fixed_depth=fixed_depth, max_depth=max_depth)
