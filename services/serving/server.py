"""gRPC server plumbing shared by the services: health, reflection, graceful shutdown.

``start_server`` binds an asyncio server with the standard ``grpc.health.v1`` service (NOT_SERVING
until the caller marks it ready) and server reflection. ``serve_forever`` waits for SIGINT or
SIGTERM, marks health NOT_SERVING, then stops with a grace period so in-flight streams finish.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from specdec.serving.metrics import serve_metrics
from specdec.serving.telemetry import setup_tracing

log = logging.getLogger("specdec.server")

# Messages carry token ids and sparse probabilities; bound them so one bad client cannot
# make a replica allocate without limit.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass
class Running:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: tuple[str, ...]
    # Run after the server has stopped (e.g. a replica's scheduler), in order.
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.set_serving(False)
        await self.server.stop(grace_s)
        for hook in self.on_stop:
            await hook()


async def start_server(
    address: str,
    register: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
) -> Running:
    """Start a server on ``address`` ("host:port", port 0 picks a free one)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    running = Running(server, health_servicer, port, tuple(service_names))
    await running.set_serving(False)
    return running


async def serve_forever(running: Running, grace_s: float = 5.0) -> None:
    """Block until SIGINT/SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down (grace %.0fs)", grace_s)
    await running.stop(grace_s)


async def start_service(
    address: str,
    role: str,
    servicer: object,
    add_to_server: Callable[[object, grpc.aio.Server], None],
    service: ServiceDescriptor,
) -> Running:
    """Serve one servicer (plus health and reflection) and mark it SERVING: it is ready."""
    # Models are loaded: move everything alive now out of the collector's reach, so a full
    # collection over the model's Python objects never stalls a request (seen: 188 ms).
    gc.collect()
    gc.freeze()
    running = await start_server(
        address, [lambda s: add_to_server(servicer, s)], [service.full_name]
    )
    await running.set_serving(True)
    log.info("%s ready on port %d", role, running.port)
    return running


def run_service(role: str, metrics_port: int, start: Callable[[], Awaitable[Running]]) -> None:
    """A replica's process: tracing and metrics as configured, then serve until a signal."""
    setup_tracing(f"specdec-{role}")
    serve_metrics(metrics_port)

    async def run() -> None:
        await serve_forever(await start())

    asyncio.run(run())
