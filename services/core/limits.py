"""Bounds every role agrees on, spelled once: the router validates against them at the edge, the
replicas validate again at theirs.
"""

from __future__ import annotations

from specdec.core.errors import InvalidRequest

# The deepest speculation any caller may ask for in one round (draft tokens verified at once).
MAX_SPEC_DEPTH = 16

# Draft probabilities shipped per position when sampling (the draft's top tokens).
MAX_SPARSE_WIDTH = 256


def check_depth(k: int, field: str = "k") -> None:
    """Raise ``InvalidRequest`` unless 0 <= k <= MAX_SPEC_DEPTH."""
    if not 0 <= k <= MAX_SPEC_DEPTH:
        raise InvalidRequest(field, f"speculation depth must be in [0, {MAX_SPEC_DEPTH}], got {k}")
