"""gRPC server plumbing shared by the services: transport, health, graceful shutdown.

``start_server`` binds an asyncio server with the standard ``grpc.health.v1`` service (NOT_SERVING
until the caller marks it ready), as its ``Transport`` says: TLS (mTLS with a client CA) or
plaintext, plaintext only on loopback unless ``insecure``; server reflection only when asked;
keepalive pings so dead peers' connections close; a cap on streams per connection; and, when
``health_listen`` is set, a second, plaintext port serving health alone (for kubelet probes, which
cannot show a client certificate). ``serve_forever`` waits for SIGINT or SIGTERM, marks health
NOT_SERVING, then stops with a grace period so in-flight streams finish.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from specdec.core.errors import SpecdecError
from specdec.serving.decode import DecodeGuard
from specdec.serving.metrics import serve_metrics
from specdec.serving.telemetry import setup_tracing
from specdec.serving.tls import ServerTLS

log = logging.getLogger("specdec.server")

# Messages carry token ids and sparse probabilities; bound them so one bad client cannot
# make a replica allocate without limit.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
# Server side only: ping an idle connection every 30 s and drop it if the peer does not answer
# within 10 s (a vanished peer's streams end instead of holding slots); let clients ping every
# 10 s at most.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class Transport:
    """How a server listens: TLS or not, what it exposes besides its service."""

    tls: ServerTLS | None = None  # None: plaintext (loopback only, unless insecure)
    insecure: bool = False  # allow plaintext on a non-loopback address
    reflection: bool = False  # gRPC server reflection (lets anyone list the API)
    health_listen: str | None = None  # host:port of a plaintext health-only port
    max_streams_per_connection: int = 256  # HTTP/2 concurrent streams one connection may open


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` binds loopback only (an empty host or 0.0.0.0 binds everything)."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_listen(address: str, transport: Transport, remedy: str = "") -> None:
    """Refuse plaintext on a non-loopback address unless the caller said ``insecure``."""
    if transport.tls is None and not transport.insecure and not is_loopback(address):
        remedy = remedy or (
            "--tls-cert and --tls-key (and --tls-client-ca for mTLS), or --insecure"
        )
        raise SpecdecError(
            f"refusing to listen on {address} without TLS: bind 127.0.0.1, or pass {remedy} "
            "to accept plaintext on the network"
        )


@dataclass
class Running:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: tuple[str, ...]
    # Run after the server has stopped (e.g. a replica's scheduler), in order.
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    health_server: grpc.aio.Server | None = None  # the plaintext health-only port, if any
    health_port: int = 0

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
        if self.health_server is not None:
            await self.health_server.stop(0)
        for hook in self.on_stop:
            await hook()


async def start_server(
    address: str,
    register: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    transport: Transport = Transport(),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> Running:
    """Start a server on ``address`` ("host:port", port 0 picks a free one)."""
    check_listen(address, transport)
    options = [
        *SERVER_OPTIONS,
        *KEEPALIVE_OPTIONS,
        ("grpc.max_concurrent_streams", transport.max_streams_per_connection),
    ]
    # DecodeGuard innermost: malformed request bytes → INVALID_ARGUMENT naming the message.
    server = grpc.aio.server(options=options, interceptors=[*interceptors, DecodeGuard()])
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if transport.reflection:
        names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    if transport.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, transport.tls.credentials())
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    health_server, health_port = None, 0
    if transport.health_listen:
        health_server = grpc.aio.server(options=KEEPALIVE_OPTIONS)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(transport.health_listen)
        if health_port == 0:
            raise OSError(f"cannot listen on {transport.health_listen}")
    await server.start()
    if health_server is not None:
        await health_server.start()
    running = Running(
        server, health_servicer, port, tuple(service_names), [], health_server, health_port
    )
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
    transport: Transport = Transport(),
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> Running:
    """Serve one servicer (plus health) and mark it SERVING: it is ready."""
    # Models are loaded: move everything alive now out of the collector's reach, so a full
    # collection over the model's Python objects never stalls a request (seen: 188 ms).
    gc.collect()
    gc.freeze()
    running = await start_server(
        address,
        [lambda s: add_to_server(servicer, s)],
        [service.full_name],
        transport,
        interceptors,
    )
    await running.set_serving(True)
    log.info(
        "%s ready on port %d (%s%s)",
        role,
        running.port,
        "plaintext" if transport.tls is None else "mTLS" if transport.tls.client_ca else "TLS",
        f", health on port {running.health_port}" if running.health_port else "",
    )
    return running


def run_service(
    role: str,
    metrics: tuple[str, int],
    start: Callable[[], Awaitable[Running]],
) -> None:
    """A replica's process: tracing and metrics (host, port) as configured, then serve until a
    signal."""
    setup_tracing(f"specdec-{role}")
    serve_metrics(metrics[1], metrics[0])

    async def run() -> None:
        await serve_forever(await start())

    asyncio.run(run())
