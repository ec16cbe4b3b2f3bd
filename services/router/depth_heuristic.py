"""Heuristic depth policy: grow k while drafts are all accepted, shrink it on a rejection.

The rule, per round (k is the depth this policy asked for, kept in [1, max_depth]):

- every proposed draft accepted and the draft delivered all k: k + 1;
- every proposed draft accepted but fewer than k were proposed (a prompt-lookup proposer
  ran out of matches): k unchanged, a deeper ask would not be filled either;
- a rejection after at least one accepted draft: k - 1;
- the first draft rejected: k halved (rounded down);
- no draft proposed at all: k unchanged (nothing learnt about acceptance).

It looks only at acceptance, never at timings or verifier load, and never picks k = 0: it is the
simple, explainable baseline (like the "heuristic" schedule of Hugging Face assisted
generation). ``depth_goodput`` is the policy that weighs costs.
"""

from __future__ import annotations

from specdec.core.rounds import Round

DEFAULT_INITIAL_DEPTH = 4


class HeuristicDepth:
    """Additive growth on full acceptance, decrease (halving on a first-draft miss) otherwise."""

    name: str = "heuristic"

    def __init__(self, max_depth: int = 8, *, initial_depth: int | None = None) -> None:
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        if initial_depth is None:
            initial_depth = min(DEFAULT_INITIAL_DEPTH, max_depth)
        if not 1 <= initial_depth <= max_depth:
            raise ValueError(f"initial_depth must be in [1, {max_depth}], got {initial_depth}")
        self.max_depth = max_depth
        self._depth = initial_depth

    def next_depth(self) -> int:
        return self._depth

    def observe(self, obs: Round) -> None:
        if obs.num_proposed == 0:
            return
        if obs.num_accepted == obs.num_proposed:
            if obs.num_proposed >= self._depth:
                self._depth = min(self._depth + 1, self.max_depth)
        elif obs.num_accepted == 0:
            self._depth = max(self._depth // 2, 1)
        else:
            self._depth = max(self._depth - 1, 1)
