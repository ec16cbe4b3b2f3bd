"""The model's step forward under ``torch.compile``: warmed on a scratch cache, eager until then.

``CompiledForward`` stands in for ``DecoderModel.forward`` in ``ModelRunner``. It compiles once
with dynamic shapes (token, batch and context lengths symbolic) on ``generic`` batches
(``batch.py``: always a mask, at least two logit rows), so recompilation is bounded by the shape
*classes* dynamo still specialises on (one token or several, one sequence or several), not by
every length: ``warm`` steps one batch of each class through a scratch cache, and nothing else
compiles while serving (tests/test_compile.py counts dynamo's graphs).
Until ``warm`` has finished (it may run on a background thread) the eager forward serves, so a
replica can answer at once and speed up when the compiled graphs are ready.

Compiled code reaches oneDNN's packed weights through a custom op (``packed_linear.py``) that
the compiler leaves alone; inductor generates the rest (norms, rotary, SwiGLU, residuals, the
attention's gathers). On CUDA the
same forward runs under CUDA graphs (``mode="reduce-overhead"``); the KV slabs are marked static
addresses so the graphs may write them in place.

Compiled artifacts go to an on-disk cache (``SPECDEC_COMPILE_CACHE``, default
``~/.cache/specdec/compile``) so a restart only re-traces. Any failure to compile or to run the
compiled graph logs one line and leaves the eager forward in charge for good.
Non-goals: choosing the default (the services' flags do), ahead-of-time export.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from specdec.engine.batch import Chunk, ForwardBatch
from specdec.engine.kv_cache import KVCache
from specdec.engine.model import DecoderModel

log = logging.getLogger(__name__)

COMPILE_ENV = "SPECDEC_COMPILE"  # "1"/"0": the default of --compile/--no-compile
CACHE_ENV = "SPECDEC_COMPILE_CACHE"  # folder of compiled artifacts
WARM_LEN = 16  # prompt tokens of the warm-up prefill


def compile_by_default(flag: bool | None = None) -> bool:
    """Whether to compile: ``flag`` when given (``--compile``/``--no-compile``), else
    ``SPECDEC_COMPILE``, else off (eager measured as fast on the CPUs this was tuned on; see
    BENCHMARKS.md)."""
    if flag is not None:
        return flag
    return os.environ.get(COMPILE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """Where compiled artifacts persist across restarts."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "specdec" / "compile"


def warm_shapes(two_slots: bool) -> list[list[tuple[int, int, int]]]:
    """One step of each shape class a generic batch falls in, as (slot index, tokens, logits)
    per chunk, run in order on a scratch cache that starts empty: one sequence with one token
    (decode) or several (prefill, verify), and, given two slots, several sequences with one
    token each (batched decode) or more (anything else)."""
    single = [[(0, WARM_LEN, 1)], [(0, 1, 1)]]
    if not two_slots:
        return single
    return [*single, [(0, 1, 1), (1, 1, 1)], [(0, 5, 5), (1, 3, 1)]]


class CompiledForward:
    """``model.forward`` compiled, with the eager forward until warmed and after any failure."""

    def __init__(self, model: DecoderModel) -> None:
        self.model = model
        self.device = model.lm_head.weight.device
        self.ready = False  # the compiled graphs serve
        self.failed: str | None = None  # why compiled code is off for good
        self._compiled: Callable[[ForwardBatch, KVCache], torch.Tensor] | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, batch: ForwardBatch, cache: KVCache) -> torch.Tensor:
        if self.ready and self._compiled is not None and batch.generic:
            try:
                return self._compiled(batch, cache)
            except Exception as exc:  # any failure means: run eagerly
                self._give_up(f"running it failed: {exc}")
        return self.model(batch, cache)

    def _give_up(self, why: str) -> None:
        self.ready = False
        self._compiled = None
        self.failed = why
        log.warning("compiled forward is off, running eagerly: %s", why)

    def _build(self) -> Callable[[ForwardBatch, KVCache], torch.Tensor]:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir())  # read at each use
        # Sizes that happen to be equal while tracing (two sequences, two slots) stay separate
        # symbols, else the graph would only fit batches where they are equal again.
        torch.fx.experimental._config.use_duck_shape = False
        # Graphs are shared by every model of the class (a target and a draft in one process:
        # 4 shape classes each, more with other widths); past the limit dynamo runs eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        if self.device.type == "cuda":
            return torch.compile(self.model.forward, dynamic=True, mode="reduce-overhead")
        return torch.compile(self.model.forward, dynamic=True)

    def warm(self, num_slots: int, max_seq_len: int, background: bool = False) -> None:
        """Compile and run every shape class on a scratch cache; then serve compiled.

        ``num_slots``/``max_seq_len``: the real cache's (a one-slot cache keeps the slot
        dimension static, so the scratch one must match). With ``background`` this returns at
        once and the eager forward serves meanwhile.
        """
        if background:
            self._thread = threading.Thread(
                target=self._warm, args=(num_slots, max_seq_len), name="compile", daemon=True
            )
            self._thread.start()
        else:
            self._warm(num_slots, max_seq_len)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a background warm-up; whether the compiled forward serves now."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.ready

    def _warm(self, num_slots: int, max_seq_len: int) -> None:
        start = time.perf_counter()
        try:
            scratch = self.model.new_cache(min(num_slots, 2), max_seq_len)
            if self.device.type == "cuda":
                mark_static(scratch)
            compiled = self._build()
            shapes = warm_shapes(num_slots > 1)
            log.info("compiling the step forward: %d shapes (cache %s)", len(shapes), cache_dir())
            slots = [scratch.allocate() for _ in range(min(num_slots, 2))]
            token = 1
            for i, steps in enumerate(shapes, 1):
                chunks = []
                for index, tokens, logits in steps:
                    slot = slots[index]
                    chunks.append(Chunk(slot, [token] * tokens, scratch.length(slot), logits))
                run_chunks(compiled, self.model, chunks, scratch)
                log.info("compiled shape %d/%d (%.0f s)", i, len(shapes), _since(start))
            self._compiled = compiled
            self.ready = True
            log.info("compiled step forward ready after %.1f s", _since(start))
        except Exception as exc:  # compile unavailable: stay eager
            self._give_up(f"compiling it failed: {exc}")


def run_chunks(
    fn: Callable[[ForwardBatch, KVCache], torch.Tensor],
    model: DecoderModel,
    chunks: Sequence[Chunk],
    cache: KVCache,
) -> None:
    """One forward of ``chunks`` through ``fn`` on ``cache``, lengths advanced (warm-up)."""
    device = model.lm_head.weight.device
    batch = ForwardBatch.build(chunks, device, model.config.sliding_window, generic=True)
    with torch.inference_mode():
        fn(batch, cache)
    for chunk in chunks:
        cache.append(chunk.slot, len(chunk.token_ids))


def mark_static(cache: KVCache) -> None:
    """Tell dynamo the KV slabs never move, so CUDA graphs may write them in place."""
    for slab in (*cache.keys, *cache.values):
        torch._dynamo.mark_static_address(slab)


def _since(start: float) -> float:
    return time.perf_counter() - start
