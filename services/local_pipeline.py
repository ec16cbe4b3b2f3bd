"""All three services in this process, on loopback ports: for tests and benchmarks.

``Pipeline`` starts an asyncio loop on a background thread and, on it, one or more verifiers,
a draft replica (model, or prompt lookup only) and a router, each a real gRPC server on port 0.
Callers talk to them with ordinary blocking gRPC stubs, like any client. (``specdec up`` runs
the same services as separate processes instead.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc

from specdec.draft import app as draft_app
from specdec.router import app as router_app
from specdec.serving.server import Running
from specdec.v1 import common_pb2, draft_pb2_grpc, generation_pb2_grpc, verifier_pb2_grpc
from specdec.verifier import app as verifier_app


class LoopThread:
    """An asyncio event loop running on its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Pipeline:
    target: str
    draft: str | None
    slots: int = 8
    redis_url: str | None = None
    max_context_tokens: int = 256
    num_verifiers: int = 1
    loop: LoopThread = field(default_factory=LoopThread)
    servers: dict[str, Running] = field(default_factory=dict)
    router_deps: Any = None

    def start(self) -> Pipeline:
        for i in range(self.num_verifiers):
            name = "verifier" if i == 0 else f"verifier{i + 1}"
            cfg = verifier_app.VerifierConfig(
                self.target,
                listen="127.0.0.1:0",
                device="cpu",
                slots=self.slots,
                max_seq_len=self.max_context_tokens,
            )
            self.servers[name] = self.loop.run(verifier_app.start(cfg))
        draft_cfg = draft_app.DraftConfig(
            self.draft,
            listen="127.0.0.1:0",
            device="cpu",
            slots=self.slots,
            max_seq_len=self.max_context_tokens,
        )
        self.servers["draft"] = self.loop.run(draft_app.start(draft_cfg))
        self.add_router()
        return self

    def add_router(self, **overrides: Any) -> Running:
        cfg = router_app.RouterConfig(
            model=self.target,
            verifiers=tuple(self.address(n) for n in self.servers if n.startswith("verifier")),
            drafts=(f"127.0.0.1:{self.servers['draft'].port}",),
            listen="127.0.0.1:0",
            redis_url=self.redis_url,
            max_context_tokens=self.max_context_tokens,
            **overrides,
        )
        running, self.router_deps = self.loop.run(router_app.start(cfg))
        self.servers["router"] = running
        return running

    def address(self, role: str) -> str:
        return f"127.0.0.1:{self.servers[role].port}"

    def client(self) -> generation_pb2_grpc.GenerationStub:
        return generation_pb2_grpc.GenerationStub(grpc.insecure_channel(self.address("router")))

    def status(self, role: str) -> common_pb2.ReplicaStatus:
        """GetStatus of a verifier ("verifier", "verifier2", ...) or of "draft"."""
        stub = draft_pb2_grpc.DraftStub if role == "draft" else verifier_pb2_grpc.VerifierStub
        with grpc.insecure_channel(self.address(role)) as channel:
            return stub(channel).GetStatus(common_pb2.GetStatusRequest())

    def slots_held(self) -> int:
        """KV-cache slots held on every verifier and the draft."""
        roles = [n for n in self.servers if n.startswith("verifier") or n == "draft"]
        return sum(self.status(role).slots_in_use for role in roles)

    def wait_idle(self, timeout_s: float = 5.0) -> int:
        """Slots still held once every replica is idle, or when ``timeout_s`` runs out.

        A finished request's last response can reach the client a moment before its replicas
        see its streams close and free their slots, so "nothing leaked" is checked this way.
        """
        deadline = time.monotonic() + timeout_s
        while (held := self.slots_held()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return held

    def stop_server(self, role: str) -> None:
        self.loop.run(self.servers[role].stop(0))

    def close(self) -> None:
        for running in self.servers.values():
            self.loop.run(running.stop(0))
        if self.router_deps is not None:
            self.loop.run(self.router_deps.verifiers.close())
            self.loop.run(self.router_deps.drafts.close())
            if self.router_deps.sessions is not None:
                self.loop.run(self.router_deps.sessions.close())
        self.loop.close()
