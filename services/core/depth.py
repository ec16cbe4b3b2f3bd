"""The depth-policy protocol: how many draft tokens (k) a request asks for, round by round.

The speculation loop keeps one policy object per request. Each round it calls ``next_depth()``,
runs the round, then reports it with ``observe(round)`` (the loop's one ``Round`` record). k = 0
is a plain decoding step on the verifier, and is the right answer when drafts are rarely
accepted, drafting is slow, or the verifier is saturated.

``FixedDepth`` lives here (the in-process engine and the router both use it); the adaptive
policies and the registry of names are the router's (``specdec.router.depth_policy``).
Policies are pure Python, keep all state in the object and are deterministic given the same
observations.
"""

from __future__ import annotations

from typing import Protocol

from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.core.rounds import Round


class DepthPolicy(Protocol):
    """Chooses k for the next round of one request, from that request's past rounds."""

    name: str

    def next_depth(self) -> int:
        """k for the next round, in [0, max_depth]. Calling it twice without ``observe`` gives
        the same answer."""
        ...

    def observe(self, rnd: Round) -> None:
        """Learn from the round just finished."""
        ...


class FixedDepth:
    """The same k every round."""

    name: str = "fixed"

    def __init__(self, depth: int) -> None:
        if not 0 <= depth <= MAX_SPEC_DEPTH:
            raise ValueError(f"fixed_depth must be in [0, {MAX_SPEC_DEPTH}], got {depth}")
        self.depth = depth

    def next_depth(self) -> int:
        return self.depth

    def observe(self, rnd: Round) -> None:
        pass
