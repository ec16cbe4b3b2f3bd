"""The draft/target cost ratio c, measured in this run: one decode step of each model, timed
in turns (draft, target, target verifying k + 1 tokens, ...) after a prefill, rolled back each time.

Leviathan et al. assume verifying k + 1 tokens costs one target step; ``verify_over_decode``
says how far that holds on this machine (on a CPU it does not: compute grows with tokens).
Non-goals: batched costs (``benchmarks/engine_step.py`` measures those).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from specdec.engine.batch import Chunk
from specdec.engine.runner import ModelRunner


def measure_costs(
    target: ModelRunner, draft: ModelRunner, prompt_ids: Sequence[int], k: int, repeats: int
) -> dict[str, Any]:
    """Median seconds per step of each model at the end of ``prompt_ids``, and their ratios."""
    slots = {}
    for name, runner in (("target", target), ("draft", draft)):
        slots[name] = runner.cache.allocate()
        features = runner.blank_features(len(prompt_ids))
        runner.step([Chunk(slots[name], list(prompt_ids), 0, 1, features)])  # prefill
    base = len(prompt_ids)
    times: dict[str, list[float]] = {"draft": [], "target": [], "verify": []}
    try:
        for _ in range(repeats + 2):  # the first two passes warm up and are dropped
            times["draft"].append(draft.timed_step(slots["draft"], base, 1))
            times["target"].append(target.timed_step(slots["target"], base, 1))
            times["verify"].append(target.timed_step(slots["target"], base, k + 1))
    finally:
        target.cache.free(slots["target"])
        draft.cache.free(slots["draft"])
    med = {name: statistics.median(values[2:]) for name, values in times.items()}
    return {
        "draft_step_s": med["draft"],
        "target_step_s": med["target"],
        "target_verify_s": med["verify"],
        "verify_tokens": k + 1,
        "c": med["draft"] / med["target"],
        "verify_over_decode": med["verify"] / med["target"],
        "context_tokens": base,
        "repeats": repeats,
    }
