"""Start-up both replicas share: warm the model up, start its scheduler, serve, mark SERVING.

Both serve behind a ``StreamGuard`` (idle streams end, a cap per connection) on the
``Transport`` their config names (mTLS in a deployment: only the router's certificate gets in).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from specdec.engine.batch import Chunk
from specdec.engine.runner import ModelRunner
from specdec.replica.stream import StreamGuard
from specdec.serving import metrics
from specdec.serving.server import Running, Transport, start_service


def model_name(folder: str | Path) -> str:
    """A model's name as replicas report it: its folder's name."""
    return Path(folder).resolve().name


def warm_up(runner: ModelRunner) -> None:
    """One prefill and one verify-shaped step, so the first request pays no start-up cost; with
    ``--compile``, compiling starts on a background thread and the eager forward serves until
    it is done (it logs its progress, and one line if it fails)."""
    slot = runner.cache.allocate()
    try:
        runner.step([Chunk(slot, [0] * 16, 0, 1, runner.blank_features(16))])
        runner.step([Chunk(slot, [0] * 5, 16, 5, runner.blank_features(5))])
    finally:
        runner.cache.free(slot)
    runner.warm_compiled(background=True)


async def serve_replica(
    role: str,
    listen: str,
    core: Any,
    servicer: object,
    add_to_server: Callable[[object, grpc.aio.Server], None],
    service: ServiceDescriptor,
    transport: Transport,
    guard: StreamGuard,
) -> Running:
    """Start ``core``'s scheduler on this event loop, export its gauges, serve ``servicer``."""
    core.start()
    metrics.QUEUE_DEPTH.labels(role).set_function(lambda: core.queued)
    metrics.SLOTS_IN_USE.labels(role).set_function(lambda: core.slots_in_use)
    running = await start_service(
        listen, role, servicer, add_to_server, service, transport, [guard]
    )
    running.on_stop.append(core.stop)
    return running
