"""Load a draft model in the dtype whose decode step is fastest on this machine.

A draft's numerics move only its acceptance, never the output (the target verifies every
token), so its dtype is purely a speed choice. On a GPU that is bf16. On a CPU it depends on the
chip, so the draft is timed in both and the faster wins. The two chips this project has run on
disagree: on a 2-core AVX2 machine, bf16 took the demo draft's step from 1.7 to 1.3 ms, because
a small model's step there is bound by the bytes it reads. On a 2-core Sapphire Rapids (AMX),
fp32 takes 1.0 ms and bf16 1.5 ms: there a small bf16 matmul has a fixed cost of ~25 µs that
fp32 does not (192 × 320 weights: 33 µs against 7.6 µs), which outweighs the bytes it saves
(``tools/eval_demo.py --draft-dtype`` measures either).

Timing costs two loads and ~200 small decode steps at start-up (~0.3 s for the demo draft).
Blocks of steps alternate between the candidates, so a busy CPU slows both alike, while each
block runs warm, as a draft's steps do (steps that alternate one by one evict each other's
weights from the caches, which favours the smaller dtype: on an AMD EPYC that measured bf16
ahead, while warm the demo draft's step took 0.37 ms in fp32 and 0.54 ms in bf16). Each is
timed for one sequence and for a batch of ``BATCH`` (draft-ahead drafts several branches at
once). A candidate's cost is its fastest block (the median of the block's steps): another process
taking the CPU only ever adds time, and with one median over all steps the choice flipped from
start to start on a shared machine (the demo draft on an AMD EPYC came up bf16 at 0.55 ms a step
in some starts, against fp32's 0.44).
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch

from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

log = logging.getLogger(__name__)

CPU_CANDIDATES = (torch.float32, torch.bfloat16)
GPU_DTYPE = torch.bfloat16


BATCH = 4  # rows of the batched step timed


def fastest(models: list[DecoderModel], context: int = 64, steps: int = 48, block: int = 6) -> int:
    """Index of the model whose decode steps (one row, and ``BATCH`` rows) are shortest in sum,
    each its fastest block's median; blocks of ``block`` steps alternate between the models."""
    context = min(context, models[0].config.max_position_embeddings - 1)
    runners = [ModelRunner(m, num_slots=BATCH, max_seq_len=context + 1) for m in models]
    slots = [[r.cache.allocate() for _ in range(BATCH)] for r in runners]
    for runner, own in zip(runners, slots, strict=True):
        for slot in own:
            runner.step([Chunk(slot, [0] * context, 0, 1, runner.blank_features(context))])
        _step(runner, own, context)  # the first calls pay one-off set-up
    single: list[list[float]] = [[] for _ in runners]  # per model: each block's median
    batched: list[list[float]] = [[] for _ in runners]
    for _ in range(steps // block):
        for runner, own, one, many in zip(runners, slots, single, batched, strict=True):
            times = [
                (_step(runner, own[:1], context), _step(runner, own, context)) for _ in range(block)
            ]
            one.append(statistics.median(t for t, _ in times))
            many.append(statistics.median(t for _, t in times))
    costs = [min(a) + min(b) for a, b in zip(single, batched, strict=True)]
    return costs.index(min(costs))


def _step(runner: ModelRunner, slots: list[int], base: int) -> float:
    """Seconds for one decode step of ``slots`` from position ``base``, rolled back after."""
    start = time.perf_counter()
    runner.step([Chunk(slot, [1], base, 1, runner.blank_features(1)) for slot in slots])
    elapsed = time.perf_counter() - start
    for slot in slots:
        runner.cache.rollback_to(slot, base)
    return elapsed


def load_draft(folder: str | Path, device: str) -> DecoderModel:
    """The draft in bf16 on a GPU; on a CPU in whichever of fp32 and bf16 steps faster here."""
    if device != "cpu":
        return load_model(folder, GPU_DTYPE, device)
    models = [load_model(folder, dtype, device) for dtype in CPU_CANDIDATES]
    best = fastest(models)
    log.info("draft runs in %s: the faster decode step on this CPU", CPU_CANDIDATES[best])
    return models[best]
