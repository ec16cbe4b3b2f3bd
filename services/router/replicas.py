"""The router's view of draft and verifier replicas: channels, load, and who is down.

Locally the replicas are a static list of addresses (Kubernetes discovery replaces the list in a
cluster). ``pick`` prefers a requested replica (session affinity) when it is up, else the least
loaded: fewest streams open from this router, then the load the replica last reported.

A replica whose stream failed is down: skipped until its health service says SERVING again
(asked every ``PROBE_EVERY_S`` after a hold of 0.25 s, doubled for each failure that follows
its return too closely, up to ``down_s``), so a restarted draft drafts again for the next request
within about a second of being ready. Channels reconnect at least every second for the same
reason. While no verifier is up, requests fail with UNAVAILABLE and a retry hint.

The router's own health stays SERVING while no verifier is up: it still answers every request
(UNAVAILABLE, retry in a second) and serves again by itself when one is back. NOT_SERVING would
take every router out of its Service at once for a fault none of them can mend, and clients would
get connection errors instead of a retry hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.core.errors import Unavailable
from specdec.serving.server import SERVER_OPTIONS
from specdec.serving.tls import ClientTLS, aio_channel
from specdec.v1 import common_pb2

log = logging.getLogger("specdec.router")

HOLD_FIRST_S = 0.25  # a failed replica's first hold before its health is asked
STABLE_S = 30.0  # back this long: its next failure counts as the first again
PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 1.0
RETRY_AFTER_S = 1.0  # the retry hint while no replica of a role is up
# Reconnect within a second of a replica's return (grpc's default backoff grows to 2 minutes).
CHANNEL_OPTIONS = [
    *SERVER_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass
class Replica:
    address: str
    channel: grpc.aio.Channel
    stub: Any
    open_streams: int = 0
    reported_active: int = 0
    down: bool = False  # a stream failed; up again when its health says SERVING
    failures: int = 0
    strikes: int = 0  # failures in a row, each within STABLE_S of its return: the hold doubles
    up_since: float = float("-inf")
    probe: asyncio.Task[None] | None = None
    reads_features: bool | None = None  # (drafts) what its status said; None: not asked yet

    @property
    def up(self) -> bool:
        return not self.down


@dataclass
class ReplicaPool:
    """Replicas of one role (draft or verifier)."""

    role: str
    stub_type: Any
    down_s: float = 5.0  # the longest hold of a failed replica before its health is asked
    tls: ClientTLS | None = None  # the replicas' CA and this router's certificate (mTLS)
    replicas: dict[str, Replica] = field(default_factory=dict)

    def set_addresses(self, addresses: list[str]) -> None:
        """Replace the replica list (static config, or the discovery watch)."""
        for gone in set(self.replicas) - set(addresses):
            _stop_probe(self.replicas.pop(gone))  # its channel closes when its last stream ends
        for address in addresses:
            if address not in self.replicas:
                channel = aio_channel(address, self.tls, CHANNEL_OPTIONS)
                self.replicas[address] = Replica(address, channel, self.stub_type(channel))

    def __len__(self) -> int:
        return len(self.replicas)

    def pick(self, preferred: str | None = None, exclude: set[str] | None = None) -> Replica:
        exclude = exclude or set()
        candidates = [r for r in self.replicas.values() if r.up and r.address not in exclude]
        if not candidates:
            raise Unavailable(
                f"no {self.role} replica is available; retry shortly", retry_after_s=RETRY_AFTER_S
            )
        for r in candidates:
            if r.address == preferred:
                return r
        return min(candidates, key=lambda r: (r.open_streams, r.reported_active))

    async def reads_features(self) -> bool:
        """Whether the drafts read the target's hidden states (feature drafts; a deployment's
        drafts all serve one model): an up replica's status, asked once and kept until it
        fails. False when none answers (the request then drafts without them, or not at all)."""
        try:
            replica = self.pick()
        except Unavailable:
            return False
        if replica.reads_features is None:
            try:
                status = await replica.stub.GetStatus(
                    common_pb2.GetStatusRequest(), timeout=PROBE_TIMEOUT_S
                )
            except grpc.RpcError:
                return False
            replica.reads_features = status.reads_features
        return replica.reads_features

    def mark_down(self, replica: Replica) -> None:
        """Skip ``replica`` until its health service says SERVING (after a hold)."""
        replica.failures += 1
        replica.reads_features = None  # it may come back serving another model
        if replica.down:
            return
        now = time.monotonic()
        replica.strikes = 1 if now - replica.up_since >= STABLE_S else replica.strikes + 1
        replica.down = True
        hold_s = min(self.down_s, HOLD_FIRST_S * 2 ** (replica.strikes - 1))
        replica.probe = asyncio.get_running_loop().create_task(self._probe(replica, hold_s))

    async def _probe(self, replica: Replica, hold_s: float) -> None:
        """Wait ``hold_s``, then ask the replica's health until SERVING; then it is up."""
        health = health_pb2_grpc.HealthStub(replica.channel)
        await asyncio.sleep(hold_s)
        while True:
            with contextlib.suppress(grpc.RpcError):
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            await asyncio.sleep(PROBE_EVERY_S)
        replica.down, replica.up_since, replica.probe = False, time.monotonic(), None
        log.info("%s %s is serving again", self.role, replica.address)

    async def close(self) -> None:
        for replica in self.replicas.values():
            _stop_probe(replica)
            await replica.channel.close()


def _stop_probe(replica: Replica) -> None:
    if replica.probe is not None:
        replica.probe.cancel()
        replica.probe = None
