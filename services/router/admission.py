"""Admission: a request beyond the verifiers' free slots waits its turn instead of being refused.

Each request asks for a ticket before the router opens its streams. A ticket is granted while
the requests holding one from this router are fewer than the verifiers' capacity: the sum of
``slots_total`` over the verifier replicas that are up (polled with ``GetStatus`` at start and
every ``refresh_s``). Parked session slots count as free, since the verifier evicts them on
demand. Requests beyond it wait in a bounded queue, first come first served within a caller
identity (``Request.identity``) and round-robin between identities, so one caller flooding the
router delays another's request by at most one turn per identity ahead of it.

A request is refused (``OutOfSlots`` → RESOURCE_EXHAUSTED with a ``RetryInfo`` hint) only when
the queue is full (``max_waiting``) or it waited ``timeout_s`` without a turn; a cancelled
request leaves the queue at once. The hint is the expected wait for a slot:
``(requests ahead + 1) / capacity × mean slot hold time``.

Another router may take a slot this one counted as free, and a slot this router's last request
released is free on the verifier only once the verifier has seen that stream end (a moment
later): the verifier then refuses the open with RESOURCE_EXHAUSTED, and the request keeps its
ticket and waits (``wait_for_slot``: until a ticket of this router is released or a back-off of
5 ms, doubling per refusal up to 50 ms, passes) before opening again, up to ``timeout_s``. What
was admitted is never failed for want of a slot within that time.

When no verifier's capacity is known (none up, or none answered ``GetStatus``) nothing waits:
the request goes on and fails or succeeds by itself (UNAVAILABLE when no verifier is up).

Not here: draft slots (a request that gets no draft slot decodes at k = 0, same output),
coordination between router replicas, priorities.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from specdec.core.errors import OutOfSlots
from specdec.router.replicas import ReplicaPool
from specdec.serving import metrics
from specdec.v1 import common_pb2

log = logging.getLogger("specdec.router")

DEFAULT_MAX_WAITING = 256
DEFAULT_TIMEOUT_S = 60.0
REFRESH_S = 1.0  # GetStatus poll period per verifier
STATUS_TIMEOUT_S = 1.0
HOLD_DECAY = 0.9  # weight of the past in the mean slot hold time
DEFAULT_HOLD_S = 1.0  # mean slot hold time before any request finished
MIN_RETRY_S, MAX_RETRY_S = 0.1, 60.0
FIRST_BACKOFF_S = 0.005  # a request the verifier found full waits this long, doubling per
MAX_BACKOFF_S = 0.05  # refusal up to this, before trying again (or until a release)


def retry_after_s(ahead: int, capacity: int, hold_s: float) -> float:
    """Expected seconds until a request with ``ahead`` requests before it gets one of
    ``capacity`` slots that are each held ``hold_s`` on average (clamped to a sane range)."""
    if capacity <= 0:
        return MAX_RETRY_S
    return min(MAX_RETRY_S, max(MIN_RETRY_S, (ahead + 1) / capacity * hold_s))


@dataclass
class Ticket:
    """A request's admission: held from the grant until ``Admission.release``."""

    identity: str
    queued_ns: int = 0  # time spent waiting: for the grant, then for a verifier that was full
    granted_at: float = 0.0  # clock() at the grant
    deadline: float = 0.0  # clock() after which a verifier that is full fails the request
    refusals: int = 0  # opens the verifier refused for want of a slot
    released: bool = False


@dataclass
class _Waiter:
    ticket: Ticket
    future: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def granted(self) -> bool:
        return self.future.done() and not self.future.cancelled()


class Admission:
    """One per router process; used from its event loop only (no locking)."""

    def __init__(
        self,
        verifiers: ReplicaPool,
        max_waiting: int = DEFAULT_MAX_WAITING,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_waiting < 0 or timeout_s <= 0:
            raise ValueError("max_waiting must be >= 0 and timeout_s > 0")
        self.verifiers = verifiers
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.clock = clock
        self.slots_total: dict[str, int] = {}  # verifier address -> its KV-cache slots
        self.slots_used: dict[str, int] = {}  # verifier address -> slots its sequences hold
        self.admitted = 0  # tickets held
        self.waiting = 0
        self.hold_s = DEFAULT_HOLD_S
        self._queues: OrderedDict[str, deque[_Waiter]] = OrderedDict()  # identity -> FIFO
        self._released = asyncio.Event()  # set (and cleared) at every release
        self._refresher: asyncio.Task[None] | None = None

    # --- capacity ---------------------------------------------------------------------------

    def capacity(self) -> int | None:
        """Slots of the verifiers that are up and known; None when none is (nothing waits)."""
        known = [
            self.slots_total[a]
            for a, r in self.verifiers.replicas.items()
            if r.up and a in self.slots_total
        ]
        return sum(known) if known else None

    def kv_usage(self) -> float:
        """Slots in use ÷ slots over the verifiers that are up and known (0 when none is)."""
        known = [a for a, r in self.verifiers.replicas.items() if r.up and a in self.slots_total]
        total = sum(self.slots_total[a] for a in known)
        return sum(self.slots_used.get(a, 0) for a in known) / total if total else 0.0

    def set_slots(self, address: str, slots_total: int | None, slots_used: int = 0) -> None:
        """What a verifier reported (None: it did not answer); grants what now fits."""
        if slots_total:
            self.slots_total[address] = slots_total
            self.slots_used[address] = slots_used
        else:
            self.slots_total.pop(address, None)
            self.slots_used.pop(address, None)
        metrics.set_kv_usage(self.kv_usage())
        self._dispatch()

    async def refresh(self) -> None:
        """Ask every verifier for its slots (concurrently, each with a short timeout)."""
        replicas = list(self.verifiers.replicas.values())
        statuses = await asyncio.gather(
            *(
                r.stub.GetStatus(common_pb2.GetStatusRequest(), timeout=STATUS_TIMEOUT_S)
                for r in replicas
            ),
            return_exceptions=True,
        )
        for replica, status in zip(replicas, statuses, strict=True):
            if isinstance(status, grpc.aio.AioRpcError | OSError | asyncio.TimeoutError):
                self.set_slots(replica.address, None)
            elif isinstance(status, BaseException):
                raise status
            else:
                load = status.load  # parked sessions count as free: evicted on demand
                self.set_slots(
                    replica.address, load.slots_total, load.slots_total - load.slots_free
                )
        for gone in set(self.slots_total) - set(self.verifiers.replicas):
            self.slots_total.pop(gone)
            self.slots_used.pop(gone, None)
        metrics.set_kv_usage(self.kv_usage())

    async def start(self) -> None:
        """Learn the verifiers' slots, then keep them up to date in the background."""
        await self.refresh()
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:  # the poller must outlive a bug; the next poll tries again
                log.exception("admission: verifier status poll failed")

    # --- tickets ----------------------------------------------------------------------------

    def retry_after(self) -> float:
        return retry_after_s(self.waiting, self.capacity() or 0, self.hold_s)

    async def admit(self, identity: str) -> Ticket:
        """A ticket for a request of ``identity``: at once when a slot is free, else after its
        turn in the queue. Raises ``OutOfSlots`` when the queue is full or the wait times out."""
        started = self.clock()
        ticket = Ticket(identity)
        if not self._queues and self._fits():
            return self._grant(ticket, started)
        if self.waiting >= self.max_waiting:
            raise OutOfSlots(
                f"the server is busy: {self.waiting} requests are already waiting for a slot",
                retry_after_s=self.retry_after(),
            )
        waiter = _Waiter(ticket)
        self._queues.setdefault(identity, deque()).append(waiter)
        self._count_waiting(+1)
        try:
            async with asyncio.timeout(self.timeout_s):
                await waiter.future
        except TimeoutError:
            if not waiter.granted:
                raise OutOfSlots(
                    f"the server is busy: no slot came free in {self.timeout_s:g} s",
                    retry_after_s=self.retry_after(),
                ) from None
        except asyncio.CancelledError:
            if waiter.granted:  # granted just as the caller went away: pass the slot on
                self.admitted -= 1
                self._dispatch()
            raise
        finally:
            self._leave(waiter)
        return self._grant(ticket, started, counted=True)

    def release(self, ticket: Ticket) -> None:
        """The request is over: its slot goes to the next in turn."""
        if ticket.released:
            return
        ticket.released = True
        self.admitted -= 1
        held = self.clock() - ticket.granted_at
        self.hold_s = HOLD_DECAY * self.hold_s + (1 - HOLD_DECAY) * held
        self._released.set()
        self._released.clear()
        self._dispatch()

    async def wait_for_slot(self, ticket: Ticket) -> None:
        """The verifier refused an admitted request's open (another router took the slot):
        wait for a release of this router, or a short back-off, before it tries again.
        Raises ``OutOfSlots`` once the request has waited ``timeout_s`` since its grant."""
        left = ticket.deadline - self.clock()
        if left <= 0:
            raise OutOfSlots(
                f"the server is busy: no verifier slot came free in {self.timeout_s:g} s",
                retry_after_s=self.retry_after(),
            )
        backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**ticket.refusals)
        ticket.refusals += 1
        started = self.clock()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, backoff)):
                await self._released.wait()
        ticket.queued_ns += int((self.clock() - started) * 1e9)  # waiting all the same

    def _fits(self) -> bool:
        capacity = self.capacity()
        return capacity is None or self.admitted < capacity

    def _grant(self, ticket: Ticket, started: float, counted: bool = False) -> Ticket:
        if not counted:
            self.admitted += 1
        now = self.clock()
        ticket.queued_ns = int((now - started) * 1e9)
        ticket.granted_at = now
        ticket.deadline = now + self.timeout_s
        metrics.QUEUE_TIME.observe(now - started)
        return ticket

    def _dispatch(self) -> None:
        """Grant the heads of the identities' queues in turn while slots are free."""
        while self._queues and self._fits():
            identity, queue = next(iter(self._queues.items()))
            waiter = queue.popleft()
            if queue:
                self._queues.move_to_end(identity)  # the next identity's turn
            else:
                del self._queues[identity]
            self._count_waiting(-1)
            if waiter.future.done():  # cancelled, its task not yet resumed to leave the queue
                continue
            self.admitted += 1
            waiter.future.set_result(None)

    def _leave(self, waiter: _Waiter) -> None:
        """Take a waiter that gave up (timeout, cancel) out of its queue."""
        queue = self._queues.get(waiter.ticket.identity)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        if not queue:
            del self._queues[waiter.ticket.identity]
        self._count_waiting(-1)

    def _count_waiting(self, delta: int) -> None:
        self.waiting += delta
        metrics.QUEUE_WAITING.set(self.waiting)
        metrics.GATEWAY_WAITING.set(self.waiting)
