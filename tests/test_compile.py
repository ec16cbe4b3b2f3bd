"""The compiled step forward: same logits as eager, same greedy output, no compile after warm-up.

One tiny target is compiled once for the module (tens of seconds the first time, about half with
the on-disk compile cache warm); every test then switches the same runner between its eager and
compiled forwards (``compiled.ready``), so the two see identical weights and cache contents.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from specdec.engine.batch import Chunk, ForwardBatch
from specdec.engine.checkpoint import load_model
from specdec.engine.compiled import COMPILE_ENV, CompiledForward, compile_by_default
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate

pytestmark = [pytest.mark.unit, pytest.mark.slow, pytest.mark.compile]

SLOTS = 3
TOL = 1e-4  # fp32


def graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> ModelRunner:
    r = ModelRunner(
        load_model(model_dir / "target"), num_slots=SLOTS, max_seq_len=128, compile=True
    )
    r.warm_compiled()
    assert r.compiled is not None and r.compiled.ready, r.compiled and r.compiled.failed
    return r


def both(runner: ModelRunner, chunks: Sequence[Chunk]) -> tuple[list[torch.Tensor], ...]:
    """``chunks``' logits eager, then compiled, from the same cache state (left advanced)."""
    assert runner.compiled is not None
    runner.compiled.ready = False
    eager = runner.step(chunks)
    for chunk in chunks:
        runner.cache.rollback_to(chunk.slot, chunk.start_pos)
    runner.compiled.ready = True
    return eager, runner.step(chunks)


def assert_close(eager: list[torch.Tensor], compiled: list[torch.Tensor]) -> None:
    assert [e.shape for e in eager] == [c.shape for c in compiled]
    for e, c in zip(eager, compiled, strict=True):
        if e.numel():
            assert (e - c).abs().max().item() <= TOL


def test_compiled_logits_equal_eager_for_prefill_decode_and_verify(runner: ModelRunner) -> None:
    before = graphs()
    slots = [runner.cache.allocate() for _ in range(SLOTS)]
    try:
        gen = random.Random(0)
        # prefill: one sequence, then two at once (one returning no logits), then a first token
        assert_close(*both(runner, [Chunk(slots[0], list(range(3, 40)), 0, 1)]))
        assert_close(*both(runner, [Chunk(slots[1], [7] * 9, 0, 0), Chunk(slots[2], [1], 0, 1)]))
        for _ in range(4):  # decode and verify at several batch sizes and positions
            for size in (1, 2, 3):
                chunks = []
                for slot in slots[:size]:
                    n = gen.choice([1, 2, 5])
                    ids = [gen.randrange(runner.vocab_size) for _ in range(n)]
                    chunks.append(Chunk(slot, ids, runner.cache.length(slot), n))
                assert_close(*both(runner, chunks))
    finally:
        for slot in slots:
            runner.cache.free(slot)
    assert graphs() == before, "a step compiled a graph the warm-up had not"


def test_greedy_speculative_output_is_the_same_compiled_or_not(
    runner: ModelRunner, model_dir: Path
) -> None:
    assert runner.compiled is not None
    draft = ModelRunner(load_model(model_dir / "draft_close"), num_slots=1)
    before = graphs()
    for prompt in ([5, 17, 33, 2, 99], [1], list(range(3, 50))):
        outputs = []
        for ready in (False, True):
            runner.compiled.ready = ready
            proposer = DraftModelProposer(draft, vocab_limit=runner.vocab_size)
            result = generate(runner, prompt, SamplingParams(), 24, proposer=proposer, depth=4)
            outputs.append(result.token_ids)
        assert outputs[0] == outputs[1]
    runner.compiled.ready = True
    assert graphs() == before


def test_a_mixed_workload_compiles_nothing_new(runner: ModelRunner) -> None:
    before = graphs()
    gen = random.Random(1)
    slots = [runner.cache.allocate() for _ in range(SLOTS)]
    try:
        for _ in range(25):
            chunks = []
            for slot in gen.sample(slots, gen.randint(1, SLOTS)):
                n = gen.choice([1, 1, 3, 5, 17])
                start = runner.cache.length(slot)
                if start + n > runner.max_seq_len:
                    runner.cache.rollback_to(slot, 0)
                    start = 0
                chunks.append(Chunk(slot, [gen.randrange(50)] * n, start, gen.randint(0, n)))
            runner.step(chunks)
    finally:
        for slot in slots:
            runner.cache.free(slot)
    assert graphs() == before


class BrokenCompile(CompiledForward):
    """A compiler that fails the way an unusable toolchain does: at the first compiled call."""

    def _build(self):  # type: ignore[no-untyped-def]
        def fail(*_: object) -> torch.Tensor:
            raise RuntimeError("no C++ compiler")

        return fail


def test_a_failing_compile_logs_one_line_and_stays_eager(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = ModelRunner(load_model(model_dir / "target"), num_slots=2, max_seq_len=64)
    runner.compiled = BrokenCompile(runner.model)
    with caplog.at_level(logging.WARNING, "specdec.engine.compiled"):
        runner.warm_compiled()
    assert not runner.compiled.ready
    assert "no C++ compiler" in (runner.compiled.failed or "")
    assert len(caplog.records) == 1 and "running eagerly" in caplog.records[0].getMessage()
    slot = runner.cache.allocate()
    (logits,) = runner.step([Chunk(slot, [1, 2, 3], 0, 1)])
    assert logits.shape == (1, runner.vocab_size)


def test_background_warm_up_serves_eagerly_until_ready(model_dir: Path) -> None:
    runner = ModelRunner(
        load_model(model_dir / "draft_close"), num_slots=2, max_seq_len=64, compile=True
    )
    assert runner.compiled is not None
    runner.warm_compiled(background=True)
    slot = runner.cache.allocate()
    (first,) = runner.step([Chunk(slot, [4, 5, 6], 0, 1)])  # answered while compiling
    assert runner.compiled.join(timeout=300)
    runner.cache.rollback_to(slot, 0)
    (again,) = runner.step([Chunk(slot, [4, 5, 6], 0, 1)])
    assert (first - again).abs().max().item() <= TOL


def test_a_verifier_built_with_compile_warms_in_the_background(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from specdec.verifier.app import VerifierConfig, build_core

    monkeypatch.setenv(COMPILE_ENV, "1")  # the default a deployment can set
    assert compile_by_default()
    core = build_core(VerifierConfig(str(model_dir / "target"), slots=4, max_seq_len=64))
    compiled = core.runner.compiled
    assert compiled is not None  # serving eagerly at this point, compiling behind
    assert compiled.join(timeout=300), compiled.failed
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert not compile_by_default()


def test_generic_batches_with_context_buckets_give_the_same_logits(model_dir: Path) -> None:
    """What the CUDA path feeds its graphs (padding rows, a mask, keys rounded up to a bucket),
    run eagerly here: the padding must change nothing."""
    runner = ModelRunner(load_model(model_dir / "target"), num_slots=2, max_seq_len=100)
    model, cache = runner.model, runner.cache
    a, b = cache.allocate(), cache.allocate()
    runner.step([Chunk(a, list(range(2, 30)), 0, 0), Chunk(b, [9] * 7, 0, 0)])
    for chunks in (
        [Chunk(a, [3], 28, 1)],
        [Chunk(a, [3, 4, 5], 28, 3), Chunk(b, [1], 7, 1)],
        [Chunk(b, [6, 7], 7, 0)],
    ):
        outs = []
        for generic, bucket in ((False, 1), (True, 1), (True, 64), (True, 128)):
            batch = ForwardBatch.build(chunks, "cpu", None, generic, bucket, cache.max_seq_len)
            with torch.inference_mode():
                outs.append(model(batch, cache)[: sum(batch.num_logits)])
        for out in outs[1:]:
            assert out.shape == outs[0].shape
            if out.numel():
                assert (out - outs[0]).abs().max().item() <= TOL
