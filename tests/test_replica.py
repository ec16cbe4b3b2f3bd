"""The replicas' model loop (``replica.scheduler``) and the verifier's core over it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import torch

from specdec.core.errors import InvalidRequest
from specdec.engine.checkpoint import load_model
from specdec.engine.proposer import Proposal
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.replica.scheduler import Scheduler
from specdec.verifier.core import VerifierCore

pytestmark = pytest.mark.unit


class Batch:
    """A unit of work that records where and in which order it ran."""

    def __init__(self, name: str, log: list, cost: int = 1, fail: bool = False) -> None:
        self.name, self.log, self.cost, self.fail_it = name, log, cost, fail
        self.thread = ""

    def run(self) -> None:
        self.thread = threading.current_thread().name
        self.log.append(("run", self.name))
        if self.fail_it:
            raise RuntimeError("a bug")

    def finish(self, elapsed_ns: int) -> None:
        self.log.append(("finish", self.name))

    def fail(self, exc: Exception) -> None:
        self.log.append(("fail", self.name))


def test_small_batches_run_on_the_loop_large_ones_on_the_worker_and_calls_go_between():
    async def main() -> tuple[list, list[Batch]]:
        log: list = []
        batches = [
            Batch("small", log),
            Batch("large", log, cost=10_000),
            Batch("bug", log, fail=True),
        ]
        queue = list(batches)
        scheduler = Scheduler(lambda: queue.pop(0) if queue else None, "test", inline_max_cost=100)
        called = scheduler.call(lambda: log.append(("call",)) or 42)
        assert await called == 42
        scheduler.wake()
        while len(log) < 7:
            await asyncio.sleep(0.01)
        await scheduler.stop()
        late = scheduler.call(lambda: None)
        with pytest.raises(RuntimeError, match="stopped"):
            await late
        return log, batches

    log, batches = asyncio.run(main())
    assert log[0] == ("call",)
    assert log[1:] == [
        ("run", "small"),
        ("finish", "small"),
        ("run", "large"),
        ("finish", "large"),
        ("run", "bug"),
        ("fail", "bug"),  # a bug fails its batch; the loop goes on
    ]
    assert batches[0].thread == threading.main_thread().name
    assert batches[1].thread != threading.main_thread().name


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> ModelRunner:
    return ModelRunner(load_model(model_dir / "target"), num_slots=4, max_seq_len=128)


def test_a_bad_item_fails_alone_and_its_batch_mates_go_on(runner: ModelRunner):
    sampling = SamplingParams(temperature=1.0, seed=3)

    async def main() -> tuple[object, object, int]:
        core = VerifierCore(runner)
        core.start()
        good, _ = await core.open([5, 6, 7], sampling, 3, "")
        bad, _ = await core.open([8, 9], sampling, 3, "")
        await core.verify(good, 3, Proposal([]))  # prefills
        await core.verify(bad, 2, Proposal([]))
        ids = torch.tensor([[1, 2]])
        fine = Proposal([1], ids, torch.tensor([[0.5, 0.5]]))
        broken = Proposal([1], ids, torch.tensor([[0.25, 0.25]]))  # sums to 0.5
        results = await asyncio.gather(
            core.verify(good, 4, fine), core.verify(bad, 3, broken), return_exceptions=True
        )
        for seq in (good, bad):
            core.close(seq, "")
        await asyncio.sleep(0.05)
        await core.stop()
        return results[0], results[1], runner.cache.slots_in_use

    ok, failed, held = asyncio.run(main())
    assert isinstance(failed, InvalidRequest) and failed.field == "draft_probs"
    assert not isinstance(ok, Exception) and ok.batch_size == 2  # one forward for both
    assert held == 0
