"""The replica's model loop: one task on the event loop runs every batched forward.

The core of a replica (``VerifierCore``, ``DraftCore``) queues work and, asked for it, hands out
the next ``Batch``; the scheduler runs batches back to back and, between them, the control calls
(open, close, ...) that touch the KV cache. Only this task touches the model and the cache, so
neither needs a lock.

Small batches (decode and verify steps) run inline on the event loop: a step's answer reaches
its stream handler without a thread hand-off, which on a small CPU costs ~0.2 ms each way.
Large ones (long prefills) run on one worker thread, so the loop keeps answering health checks
and decoding the next messages meanwhile. After each batch the scheduler yields once, so the
handlers send their answers before the next batch starts.

One bad item never costs its batch-mates their answers: when a batch's ``run`` raises, the
scheduler splits it in halves (``split``) and runs each half on its own, down to the single
item that fails, which alone gets the error (``fail``).
Non-goals: priorities between requests, preemption (a core decides what its next batch holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from specdec.core.errors import InvalidRequest

R = TypeVar("R")
log = logging.getLogger("specdec.scheduler")

# Batches of more tokens than this run on the worker thread (a few ms of CPU forward at most
# inline, so the event loop stays responsive).
INLINE_MAX_COST = 256


class Batch(Protocol):
    """One unit of model work, handed out by a replica's core."""

    cost: int  # tokens it feeds: decides inline or on the worker thread

    def run(self) -> None:
        """The forward(s): touches only the model and the cache (may run on the worker)."""
        ...

    def finish(self, elapsed_ns: int) -> None:
        """Hand out the results (always on the event loop)."""
        ...

    def fail(self, exc: Exception) -> None:
        """``run`` raised for this batch of one item (or one that cannot be split): fail it."""
        ...

    def split(self) -> list[Batch]:
        """The batch as two halves to run apart (fewer than two parts: it is one item)."""
        ...


@dataclass(frozen=True)
class Timed(Generic[R]):
    """A work item's result with where its time went."""

    result: R
    queue_ns: int  # from submit to the start of its batch
    batch_ns: int  # the batch it was part of
    batch_size: int


class Scheduler:
    """Runs ``next_batch()`` until it returns None, then sleeps until ``wake()``."""

    def __init__(
        self,
        next_batch: Callable[[], Batch | None],
        name: str,
        inline_max_cost: int = INLINE_MAX_COST,
    ) -> None:
        self._next_batch = next_batch
        self._inline_max_cost = inline_max_cost
        self._calls: deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = deque()
        self._wake = asyncio.Event()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    def wake(self) -> None:
        """New work was queued with the core."""
        self._wake.set()

    def call(self, fn: Callable[[], R]) -> asyncio.Future[R]:
        """Run ``fn`` on the scheduler between batches (it may touch the cache)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if self._task.done():
            future.set_exception(RuntimeError("the scheduler has stopped"))
            return future
        self._calls.append((fn, future))
        self._wake.set()
        return future

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """``call`` for a caller that does not wait (closing a sequence): after the scheduler
        has stopped it does nothing, and an error is logged."""
        if self._task.done():
            return
        self.call(fn).add_done_callback(_log_failure)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._worker.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            while self._calls:
                fn, future = self._calls.popleft()
                _settle(future, fn)
            batch = self._next_batch()
            if batch is None:
                if not self._calls:
                    self._wake.clear()
                    await self._wake.wait()
                continue
            await self._execute(batch)
            await asyncio.sleep(0)  # let the handlers send their answers first

    async def _execute(self, batch: Batch) -> None:
        """Run ``batch``; when it raises, run its halves apart so only the culprit fails."""
        start = time.perf_counter_ns()
        try:
            if batch.cost > self._inline_max_cost:
                await asyncio.get_running_loop().run_in_executor(self._worker, batch.run)
            else:
                batch.run()
        except Exception as exc:
            parts = batch.split() if hasattr(batch, "split") else []
            if len(parts) < 2:
                _log_item_failure(exc)
                batch.fail(exc)
                return
            log.info("a batch of cost %d failed (%s); running its halves apart", batch.cost, exc)
            for part in parts:
                await self._execute(part)
        else:
            try:
                batch.finish(time.perf_counter_ns() - start)
            except Exception as exc:  # a bug handing out results: the loop must go on
                log.error("handing out a batch's results failed", exc_info=exc)
                batch.fail(exc)


def _settle(future: asyncio.Future[Any], fn: Callable[[], Any]) -> None:
    if future.cancelled():
        return  # its caller went away before it ran: nothing happened
    try:
        future.set_result(fn())
    except Exception as exc:
        future.set_exception(exc)


def _log_item_failure(exc: Exception) -> None:
    """A caller's bad input is routine (INFO); anything else is a bug (ERROR, traceback)."""
    if isinstance(exc, InvalidRequest):
        log.info("an item failed alone: %s", exc)
    else:
        log.error("an item failed alone", exc_info=exc)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a control call failed", exc_info=future.exception())
