"""``specdec up``: the whole pipeline on one machine, on loopback, with one command.

Starts a verifier, a draft replica and a router as child processes (``specdec serve ...``) and
an embedded Redis (or uses ``REDIS_URL``), waits until each reports SERVING on the standard
health service, prints one ready line, and stops everything on Ctrl-C or SIGTERM. Meanwhile it
supervises them (``supervisor.py``): a child that dies (Redis included) is started again on the
same address, with one line on the console, and the router keeps serving (a dead draft
means k = 0, a dead verifier UNAVAILABLE with a retry hint). No child outlives ``up``, even a
kill -9 of it: each gets the Linux parent-death signal (``serving.parent_death``). On a machine
with two CPUs or more the services get disjoint CPU sets (``serving.cpus.split``: most for the
verifier, the rest for the draft and the router), so the draft drafting ahead never steals the
verifier's cores; the ready line says which. The router reaches the replicas over mTLS: ``up``
makes a throw-away CA in a private temporary folder (``serving.tls.loopback_pki``, deleted when
it stops) and gives the replicas plaintext health-only ports for its own readiness checks. The
router's public port stays plaintext on loopback.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.core.errors import Unavailable
from specdec.models.pair import TINY_DRAFT, TINY_TARGET
from specdec.router.redis_server import EmbeddedRedis, free_loopback_port, redis_url_from_env
from specdec.serving import run_folders
from specdec.serving.cpus import Layout, format_cpus, split, usable
from specdec.serving.parent_death import die_with_parent
from specdec.serving.server import Transport, check_listen
from specdec.serving.tls import loopback_pki
from specdec.supervisor import GiveUp, Supervisor

STOP_TIMEOUT_S = 10.0  # Ctrl-C: how long the services get to drain before SIGKILL


def serving(address: str, timeout_s: float = 1.0) -> bool:
    """Does the (plaintext) health service of ``address`` say SERVING?"""
    with grpc.insecure_channel(address) as channel, contextlib.suppress(grpc.RpcError):
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    return False


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll the health service of ``address`` until SERVING; fail if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"the process for {address} exited with code {process.returncode}")
        if serving(address):
            return
        time.sleep(0.2)
    raise Unavailable(f"{address} did not become ready within {timeout_s:.0f}s")


@dataclass
class Services:
    """Draft, verifier and router(s) running as child processes on loopback."""

    layout: Layout
    addresses: dict[str, str] = field(default_factory=dict)  # name -> host:port
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)  # name -> how to start it
    log_dir: Path | None = None  # children write their logs here (else to this terminal)
    health: dict[str, str] = field(default_factory=dict)  # name -> plaintext health host:port
    # A private folder (0700) for this run's mTLS CA and certificates and the routers' session
    # key; deleted at stop.
    private: Path | None = None

    def serve(self, role: str, *args: str, name: str | None = None) -> None:
        """Start ``specdec serve ROLE ARGS`` in its own session (Ctrl-C reaches only us), bound
        to this process's life (``parent_death``: call from the main thread)."""
        name = name or role
        self.commands[name] = [sys.executable, "-m", "specdec.cli", "serve", role, *args]
        self.start(name)

    def start(self, name: str) -> None:
        """Start ``name`` (again: on the same address, after it died)."""
        with contextlib.ExitStack() as files:  # the child keeps its own copy of the log's fd
            out = None
            if self.log_dir is not None:
                out = files.enter_context((self.log_dir / f"{name}.log").open("ab"))
            self.procs[name] = subprocess.Popen(
                self.commands[name],
                start_new_session=True,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                preexec_fn=die_with_parent(),
            )

    def wait(self, name: str, timeout_s: float) -> None:
        wait_serving(self._health_address(name), self.procs[name], timeout_s)

    def serving(self, name: str) -> bool:
        return serving(self._health_address(name), timeout_s=0.5)

    def _health_address(self, name: str) -> str:
        """Where ``name`` answers health: its plaintext health port, else its own address."""
        return self.health.get(name, self.addresses[name])

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """SIGTERM everything, SIGKILL what has not stopped within ``timeout_s`` (one budget for
        all); the names of those killed."""
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        killed = []
        for name, p in self.procs.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                killed.append(name)
        if self.private is not None:
            shutil.rmtree(self.private, ignore_errors=True)
        return killed

    def loopback_mtls(self) -> tuple[list[str], list[str]]:
        """A throw-away CA for this run: the replicas' flags (server side, mTLS) and the
        router's (client side)."""
        pki = loopback_pki(self._private())
        replica = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key]
        router = ["--peer-ca", pki.ca, "--peer-cert", pki.client_cert]
        return [*replica, "--tls-client-ca", pki.ca], [*router, "--peer-key", pki.client_key]

    def session_secret(self) -> list[str]:
        """The routers' flag for a session key of this run: every router (and a restarted one)
        keys sessions alike, so a conversation's cache outlives a router restart."""
        path = self._private() / "session-secret"
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
        return ["--session-secret-file", str(path)]

    def _private(self) -> Path:
        if self.private is None:
            self.private = run_folders.make("run")
        return self.private


def start_services(
    target: str,
    draft: str | None,
    listen: str,
    device: str | None = None,
    draft_device: str | None = None,
    redis: str | None = None,
    routers: dict[str, list[str]] | None = None,
    log_dir: Path | None = None,
    timeout_s: float = 300,
    replica_flags: list[str] | None = None,
    router_flags: list[str] | None = None,
    mtls: bool = False,
    verifier_flags: list[str] | None = None,
) -> Services:
    """Verifier and draft on their CPU sets, then one router on ``listen`` (and, for each entry
    of ``routers``, another router on a free port with those extra flags), all SERVING;
    ``replica_flags`` go to the draft and the verifier, ``verifier_flags`` to the verifier alone
    (``--tensor-parallel N``), ``router_flags`` to every router;
    ``mtls``: the routers reach the replicas over mTLS (a throw-away CA). On failure, whatever
    started is stopped."""
    services = Services(split(usable()), log_dir=log_dir)
    layout = services.layout
    try:
        replica_tls, router_tls = services.loopback_mtls() if mtls else ([], [])
        for role in ("verifier", "draft"):
            services.addresses[role] = f"127.0.0.1:{free_loopback_port()}"
            if mtls:
                services.health[role] = f"127.0.0.1:{free_loopback_port()}"
        replica_flags = [*replica_tls, *(replica_flags or [])]
        dev = ["--device", device] if device else []
        ddev = ["--device", draft_device or device] if (draft_device or device) else []
        v_args = ["--model", target, "--listen", services.addresses["verifier"], *dev]
        v_args += [*replica_flags, *(verifier_flags or []), *_health(services, "verifier")]
        services.serve("verifier", *v_args, *_cpus(layout.verifier))
        d_args = ["--model", draft] if draft else ["--vocab-size", _vocab(target)]
        if (draft_device or device or "cpu") == "cpu":
            # a small draft's matmuls are too short to split: threads only add sync cost
            d_args += ["--threads", "1"]
        d_args += ["--listen", services.addresses["draft"], *ddev, *replica_flags]
        d_args += _health(services, "draft")
        services.serve("draft", *d_args, *_cpus(layout.draft))
        services.wait("verifier", timeout_s)
        services.wait("draft", timeout_s)
        base = [
            "--model",
            target,
            "--verifiers",
            services.addresses["verifier"],
            "--drafts",
            services.addresses["draft"],
            *(["--redis-url", redis] if redis else []),
            *(["--draft-model", Path(draft).name] if draft else []),
            *_cpus(layout.router),
            *router_tls,
            *services.session_secret(),
            *(router_flags or []),
        ]
        for name, extra in {"router": [], **(routers or {})}.items():
            address = listen if name == "router" else f"127.0.0.1:{free_loopback_port()}"
            services.addresses[name] = address
            services.serve("router", *base, "--listen", address, *extra, name=name)
        for name in ("router", *(routers or {})):
            services.wait(name, 60)
    except BaseException:
        services.stop()
        raise
    return services


def up(
    target: str,
    draft: str | None,
    listen: str,
    device: str | None,
    draft_device: str | None,
    timeout_s: float = 300,
    insecure: bool = False,
    compile: bool | None = None,
    http_listen: str | None = None,
    tensor_parallel: int = 1,
) -> int:
    """``insecure``: the router's public ports may be plaintext on non-loopback addresses;
    ``tensor_parallel``: the verifier's target split over that many ranks (devices);
    ``compile``: the replicas' ``--compile``/``--no-compile`` (None: their default);
    ``http_listen``: the router's OpenAI-compatible HTTP API (None: none)."""
    for address in filter(None, (listen, http_listen)):
        remedy = "--insecure (specdec up serves plaintext)"
        check_listen(address, Transport(insecure=insecure), remedy)
    if http_listen and not _can_bind(http_listen):
        raise Unavailable(
            f"cannot listen on {http_listen} for the OpenAI-compatible HTTP API (in use?): "
            "pass --http-listen HOST:PORT, or --no-http"
        )
    for folder in (target, draft):
        if folder and not Path(folder).is_dir():
            hint = (
                " (train the demo pair: make demo-models)"
                if Path(folder) in (TINY_TARGET, TINY_DRAFT)
                else ""
            )
            raise Unavailable(f"model folder {folder} not found{hint}")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    run_folders.sweep()  # what an earlier `specdec up` killed with -9 left behind
    with _redis() as (url, redis_server):
        services: Services | None = None
        try:
            print("loading models ...", flush=True)
            services = start_services(
                target,
                draft,
                listen,
                device,
                draft_device,
                url,
                timeout_s=timeout_s,
                router_flags=[
                    *(["--insecure"] if insecure else []),
                    *(["--http-listen", http_listen] if http_listen else []),
                ],
                replica_flags=None if compile is None else [f"--{'' if compile else 'no-'}compile"],
                mtls=True,
                verifier_flags=["--tensor-parallel", str(tensor_parallel)],
            )
            http = f", OpenAI API on http://{http_listen}/v1" if http_listen else ""
            print(
                f"specdec ready: router on {listen}{http} (target {Path(target).name}, draft "
                f"{Path(draft).name if draft else 'n-gram'}; {services.layout.describe()}); try: "
                f"specdec generate --addr {listen} 'def fib(n):'  (Ctrl-C stops)",
                flush=True,
            )
            supervisor = _supervise(services, redis_server)
            while not stopping:
                supervisor.check()
                time.sleep(0.2)
            return 0
        except GiveUp as exc:
            print(f"specdec: {exc}", flush=True)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            if services is not None:
                for name in services.stop():
                    print(f"specdec: the {name} did not stop on SIGTERM; killed", flush=True)
            print("specdec stopped", flush=True)


@contextlib.contextmanager
def _redis() -> Iterator[tuple[str, EmbeddedRedis | None]]:
    """``REDIS_URL`` when set (not ours to restart), else an embedded Redis run for the block."""
    external = redis_url_from_env()
    if external is not None:
        yield external, None
        return
    with EmbeddedRedis() as server:
        yield server.url, server


def _supervise(services: Services, redis_server: EmbeddedRedis | None) -> Supervisor:
    """Every child restarted when it dies: the services and the embedded Redis."""
    supervisor = Supervisor(lambda line: print(line, flush=True))
    for name in services.procs:
        supervisor.watch(
            name,
            lambda name=name: services.procs[name].poll(),  # type: ignore[misc]
            lambda name=name: services.start(name),  # type: ignore[misc]
            lambda name=name: services.serving(name),  # type: ignore[misc]
        )
    if redis_server is not None:
        server = redis_server

        def redis_exit() -> int | None:  # no process (a restart that failed): dead
            process = server.process
            return process.poll() if process is not None else 1

        supervisor.watch("redis", redis_exit, server.restart)
    return supervisor


def _can_bind(address: str) -> bool:
    """Whether ``host:port`` is free to listen on now (checked before anything starts)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except (OSError, ValueError):
            return False
    return True


def _health(services: Services, name: str) -> list[str]:
    return ["--health-listen", services.health[name]] if name in services.health else []


def _cpus(cpus: set[int] | None) -> list[str]:
    return ["--cpus", format_cpus(cpus)] if cpus else []


def _vocab(target: str) -> str:
    from specdec.core.model_config import load_config

    return str(load_config(target).vocab_size)
