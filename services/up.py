"""``specdec up``: the whole pipeline on one machine, on loopback, with one command.

Starts a verifier, a draft replica and a router as child processes (``specdec serve ...``) and
an embedded Redis (or uses ``REDIS_URL``), waits until each reports SERVING on the standard
health service, prints one ready line, and stops everything on Ctrl-C or SIGTERM. On a machine
with two CPUs or more the services get disjoint CPU sets (``serving.cpus.split``: most for the
verifier, the rest for the draft and the router), so the draft drafting ahead never steals the
verifier's cores; the ready line says which.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.core.errors import Unavailable
from specdec.router.redis_server import free_loopback_port, redis_url
from specdec.serving.cpus import format_cpus, split, usable

DEMO_TARGET = Path("models/demo-target")
DEMO_DRAFT = Path("models/demo-draft")


STOP_TIMEOUT_S = 10.0  # Ctrl-C: how long the services get to drain before SIGKILL


def wait_serving(address: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll the health service of ``address`` until SERVING; fail if the process dies."""
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"the process for {address} exited with code {process.returncode}")
        with contextlib.suppress(grpc.RpcError):
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        time.sleep(0.2)
    raise Unavailable(f"{address} did not become ready within {timeout_s:.0f}s")


def _serve(role: str, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "specdec.cli", "serve", role, *args]
    return subprocess.Popen(cmd, start_new_session=True)  # Ctrl-C reaches us, not them


def up(
    target: str,
    draft: str | None,
    listen: str,
    device: str | None,
    draft_device: str | None,
    timeout_s: float = 300,
) -> int:
    for folder in (target, draft):
        if folder and not Path(folder).is_dir():
            hint = (
                " (train the demo pair: make demo-models)"
                if Path(folder) in (DEMO_TARGET, DEMO_DRAFT)
                else ""
            )
            raise Unavailable(f"model folder {folder} not found{hint}")
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    layout = split(usable())
    with redis_url() as url:
        try:
            v_addr = f"127.0.0.1:{free_loopback_port()}"
            d_addr = f"127.0.0.1:{free_loopback_port()}"
            dev = ["--device", device] if device else []
            ddev = ["--device", draft_device or device] if (draft_device or device) else []
            v_args = ["--model", target, "--listen", v_addr, *dev, *_cpus(layout.verifier)]
            procs.append(_serve("verifier", *v_args))
            draft_args = ["--model", draft] if draft else ["--vocab-size", _vocab(target)]
            if (draft_device or device or "cpu") == "cpu":
                # a small draft's matmuls are too short to split: threads only add sync cost
                draft_args += ["--threads", "1"]
            d_args = [*draft_args, "--listen", d_addr, *ddev, *_cpus(layout.draft)]
            procs.append(_serve("draft", *d_args))
            print("loading models ...", flush=True)
            wait_serving(v_addr, procs[0], timeout_s)
            wait_serving(d_addr, procs[1], timeout_s)
            router_args = [
                "--model",
                target,
                "--verifiers",
                v_addr,
                "--drafts",
                d_addr,
                "--listen",
                listen,
                "--redis-url",
                url,
                *_cpus(layout.router),
            ]
            if draft:
                router_args += ["--draft-model", Path(draft).name]
            procs.append(_serve("router", *router_args))
            wait_serving(listen, procs[2], 60)
            print(
                f"specdec ready: router on {listen} (target {Path(target).name}, draft "
                f"{Path(draft).name if draft else 'n-gram'}; {layout.describe()}); try: "
                f"specdec generate --addr {listen} 'def fib(n):'  (Ctrl-C stops)",
                flush=True,
            )
            while not stopping and all(p.poll() is None for p in procs):
                time.sleep(0.2)
            failed = [p for p in procs if p.poll() is not None]
            return 1 if failed and not stopping else 0
        except KeyboardInterrupt:
            return 0
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S  # one budget for all, not one each
            for role, p in zip(("verifier", "draft", "router"), procs, strict=False):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                if p.poll() is None:
                    print(f"specdec: the {role} did not stop on SIGTERM; killed", flush=True)
                    os.killpg(p.pid, signal.SIGKILL)
            print("specdec stopped", flush=True)


def _cpus(cpus: set[int] | None) -> list[str]:
    return ["--cpus", format_cpus(cpus)] if cpus else []


def _vocab(target: str) -> str:
    from specdec.core.model_config import load_config

    return str(load_config(target).vocab_size)
