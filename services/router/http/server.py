"""The HTTP server of the router: uvicorn, inside the router's own asyncio loop.

``start_http`` binds the socket itself (port 0 picks a free one, and the port is known at once),
loads uvicorn's configuration (a bad certificate fails the start, not a background task), and
runs ``uvicorn.Server`` as a task of the running loop: the same process and event loop as the
gRPC server, so both faces share the router's state without locks. The loopback rule is the
gRPC one (``serving.server.check_listen``): plaintext off loopback needs ``insecure``; with the
router's TLS certificate and key the HTTP port serves HTTPS (and asks for a client certificate
when the router does, mTLS).

Signals stay with the router (``serve_forever``): uvicorn's own handlers are not installed.

Non-goals: HTTP/2, several worker processes, uvicorn's access log (the router logs errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from specdec.core.errors import SpecdecError
from specdec.serving.server import Transport, check_listen

STARTUP_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the router's serve_forever owns SIGINT/SIGTERM


@dataclass
class HttpServer:
    """A running uvicorn server (a task of the router's loop) and the port it bound."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace_s``, then cancel."""
        self.server.config.timeout_graceful_shutdown = math.ceil(grace_s)  # whole seconds
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise SpecdecError(f"--http-listen {address}: expected HOST:PORT")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host or "0.0.0.0", int(port)))
    except OSError as exc:
        sock.close()
        raise SpecdecError(
            f"cannot listen on {address} for HTTP ({exc.strerror}): pick another --http-listen"
        ) from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def start_http(app: Any, address: str, transport: Transport) -> HttpServer:
    """Serve ``app`` (ASGI) on ``address`` ("host:port") until ``HttpServer.stop``."""
    check_listen(address, transport, "--tls-cert and --tls-key, or --insecure")
    tls = transport.tls
    options: dict[str, Any] = {}
    if tls is not None:
        options = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
        if tls.client_ca:
            options.update(ssl_ca_certs=tls.client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    config = uvicorn.Config(
        app, lifespan="off", access_log=False, log_level="warning", server_header=False, **options
    )
    config.load()  # reads the certificate now: a bad one fails the start
    sock = _bind(address)
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(STARTUP_TIMEOUT_S):
        while not server.started:
            if task.done():
                sock.close()
                task.result()  # raises why it stopped
                raise OSError(f"the HTTP server on {address} stopped at start-up")
            await asyncio.sleep(0.01)
    return HttpServer(server, task, sock.getsockname()[1])
