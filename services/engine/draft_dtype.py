"""Load a draft model in the dtype whose decode step is fastest on this machine.

A draft's numerics move only its acceptance, never the output (the target verifies every
token), so its dtype is purely a speed choice. On a GPU that is bf16. On a CPU it depends on the
chip, so the draft is timed in both and the faster wins. The two chips this project has run on
disagree: on a 2-core AVX2 machine, bf16 took the demo draft's step from 1.7 to 1.3 ms, because
a small model's step there is bound by the bytes it reads. On a 2-core Sapphire Rapids (AMX),
fp32 takes 1.0 ms and bf16 1.5 ms: there a small bf16 matmul has a fixed cost of ~25 µs that
fp32 does not (192 × 320 weights: 33 µs against 7.6 µs), which outweighs the bytes it saves
(``tools/eval_demo.py --draft-dtype`` measures either).

Timing costs two loads and a few dozen decode steps at start-up (~0.2 s for the demo draft).
The steps alternate between the candidates, so a busy CPU slows both alike.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import torch

from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

log = logging.getLogger(__name__)

CPU_CANDIDATES = (torch.float32, torch.bfloat16)
GPU_DTYPE = torch.bfloat16


def fastest(models: list[DecoderModel], context: int = 64, steps: int = 24) -> int:
    """Index of the model whose median decode step is shortest; steps alternate between them."""
    context = min(context, models[0].config.max_position_embeddings - 1)
    runners = [ModelRunner(m, num_slots=1, max_seq_len=context + 1) for m in models]
    slots = [r.cache.allocate() for r in runners]
    for runner, slot in zip(runners, slots, strict=True):
        runner.step([Chunk(slot, [0] * context, 0, 1)])
        runner.timed_step(slot, context)  # the first call pays one-off set-up
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(steps):
        for runner, slot, out in zip(runners, slots, times, strict=True):
            out.append(runner.timed_step(slot, context))
    medians = [statistics.median(t) for t in times]
    return medians.index(min(medians))


def load_draft(folder: str | Path, device: str) -> DecoderModel:
    """The draft in bf16 on a GPU; on a CPU in whichever of fp32 and bf16 steps faster here."""
    if device != "cpu":
        return load_model(folder, GPU_DTYPE, device)
    models = [load_model(folder, dtype, device) for dtype in CPU_CANDIDATES]
    best = fastest(models)
    log.info("draft runs in %s: the faster decode step on this CPU", CPU_CANDIDATES[best])
    return models[best]
