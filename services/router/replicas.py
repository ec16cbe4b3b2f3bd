"""The router's view of draft and verifier replicas: channels, load, and who is down.

Locally the replicas are a static list of addresses (Kubernetes discovery replaces the list in a
cluster). ``pick`` prefers a requested replica (session affinity) when it is up, else the least
loaded: fewest streams open from this router, then the load the replica last reported. A replica
whose stream failed is skipped for ``down_s`` seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from specdec.core.errors import Unavailable
from specdec.serving.server import SERVER_OPTIONS


@dataclass
class Replica:
    address: str
    channel: grpc.aio.Channel
    stub: Any
    open_streams: int = 0
    reported_active: int = 0
    down_until: float = 0.0
    failures: int = 0

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until


@dataclass
class ReplicaPool:
    """Replicas of one role (draft or verifier)."""

    role: str
    stub_type: Any
    down_s: float = 5.0
    replicas: dict[str, Replica] = field(default_factory=dict)

    def set_addresses(self, addresses: list[str]) -> None:
        """Replace the replica list (static config, or the discovery watch)."""
        for gone in set(self.replicas) - set(addresses):
            self.replicas.pop(gone)  # its channel closes when its last stream ends
        for address in addresses:
            if address not in self.replicas:
                channel = grpc.aio.insecure_channel(address, options=SERVER_OPTIONS)
                self.replicas[address] = Replica(address, channel, self.stub_type(channel))

    def __len__(self) -> int:
        return len(self.replicas)

    def pick(self, preferred: str | None = None, exclude: set[str] | None = None) -> Replica:
        exclude = exclude or set()
        candidates = [r for r in self.replicas.values() if r.up and r.address not in exclude]
        if not candidates:
            raise Unavailable(f"no {self.role} replica is available; retry shortly")
        for r in candidates:
            if r.address == preferred:
                return r
        return min(candidates, key=lambda r: (r.open_streams, r.reported_active))

    def mark_down(self, replica: Replica) -> None:
        replica.failures += 1
        replica.down_until = time.monotonic() + self.down_s

    async def close(self) -> None:
        for replica in self.replicas.values():
            await replica.channel.close()
