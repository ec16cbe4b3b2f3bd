"""Benchmark prompts, stored in the repository as JSONL (one ``{"id", "text"}`` object a line).

``code``: openings of standard-library-style Python functions (the demo pair's domain, where
drafts agree most). ``prose``: English text, notes, logs and comments (where drafts are worse).
Non-goals: downloading data sets; chat templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specdec.core.errors import SpecdecError

# services/bench/ → the repository root (the package is installed editable from the checkout).
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "prompts"
WORKLOADS = ("code", "prose")


@dataclass(frozen=True)
class Prompt:
    id: str  # unique across workloads, e.g. "code-03"
    workload: str
    text: str


def load_workload(name: str, folder: Path = PROMPTS_DIR, limit: int | None = None) -> list[Prompt]:
    """Prompts of ``name`` (``code``, ``prose`` or ``all``), at most ``limit`` of each workload."""
    names = WORKLOADS if name == "all" else (name,)
    prompts: list[Prompt] = []
    for workload in names:
        path = folder / f"{workload}.jsonl"
        if not path.is_file():
            raise SpecdecError(f"{path}: no such prompt file (workloads: {', '.join(WORKLOADS)})")
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        prompts += [Prompt(r["id"], workload, r["text"]) for r in rows[:limit]]
    if not prompts:
        raise SpecdecError(f"workload {name!r} has no prompts")
    return prompts
