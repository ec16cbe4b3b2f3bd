"""A continuous-batching loop: one thread owns the model and runs queued work in batches.

Stream handlers ``submit`` work items and await the result; the loop thread takes everything
queued (up to a budget), runs one batch function over it, and resolves each item's future with
its result and its timings. Control calls (open, close a sequence) run on the same thread
between batches, so the KV cache is only ever touched by one thread and needs no lock.
Non-goals: priorities, preemption.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

W = TypeVar("W")
R = TypeVar("R")
log = logging.getLogger("specdec.batch")


@dataclass(frozen=True)
class Timed(Generic[R]):
    """A work item's result with where its time went."""

    result: R
    queue_ns: int  # from submit to the start of its batch
    batch_ns: int  # the batch it was part of
    batch_size: int


class BatchLoop(Generic[W, R]):
    """Runs ``run_batch(items) -> results`` on its own thread over whatever is queued."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[W]], Sequence[R]],
        cost: Callable[[W], int] = lambda _w: 1,
        budget: int = 1 << 30,
        name: str = "batch-loop",
    ) -> None:
        self._run_batch = run_batch
        self._cost = cost
        self._budget = budget
        self._cv = threading.Condition()
        self._work: list[tuple[W, concurrent.futures.Future[Timed[R]], int]] = []
        self._calls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._work)

    def submit(self, item: W) -> concurrent.futures.Future[Timed[R]]:
        future: concurrent.futures.Future[Timed[R]] = concurrent.futures.Future()
        with self._cv:
            if self._stopped:
                raise RuntimeError("batch loop stopped")
            self._work.append((item, future, time.perf_counter_ns()))
            self._cv.notify()
        return future

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the loop thread before the next batch."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cv:
            if self._stopped:
                raise RuntimeError("batch loop stopped")
            self._calls.append((fn, future))
            self._cv.notify()
        return future

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout=10)

    def _take(self) -> tuple[list[Any], list[Any]]:
        with self._cv:
            while not (self._work or self._calls or self._stopped):
                self._cv.wait()
            calls, self._calls = self._calls, []
            taken, spent = [], 0
            while self._work and (
                not taken or spent + self._cost(self._work[0][0]) <= self._budget
            ):
                entry = self._work.pop(0)
                if entry[1].set_running_or_notify_cancel():  # False: its caller went away
                    spent += self._cost(entry[0])
                    taken.append(entry)
            return calls, taken

    def _loop(self) -> None:
        while True:
            calls, taken = self._take()
            for fn, future in calls:
                _settle(future, fn)
            if not taken:
                if self._stopped:
                    return
                continue
            start = time.perf_counter_ns()
            try:
                results = self._run_batch([item for item, _, _ in taken])
            except BaseException as exc:  # a bug: fail every item of the batch, keep serving
                log.exception("batch of %d failed", len(taken))
                for _, future, _ in taken:
                    future.set_exception(exc)
                continue
            batch_ns = time.perf_counter_ns() - start
            for (_, future, enqueued), result in zip(taken, results, strict=True):
                future.set_result(Timed(result, start - enqueued, batch_ns, len(taken)))


def _settle(future: concurrent.futures.Future[Any], fn: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return  # cancelled before it ran: nothing happened
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)
