"""A verifier replica over N tensor-parallel ranks: start them, watch them, go down whole.

Rank 0 runs in the verifier's own process and serves gRPC; the other ranks of this node are
child processes (``engine.tp.launch``); nodes 1..M-1 of a multi-node group run ranks only
(``run_follower_node``), no gRPC. When any local rank dies the replica turns NOT_SERVING at once
(the router takes it out of the pool), refuses every step with UNAVAILABLE, stops, and the
process exits ``EXIT_RANK_LOST`` so its supervisor (``specdec up``, Kubernetes) restarts it
whole; a hard exit follows if a step is stuck in a collective.
Non-goals: replacing one rank in a live group.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass

from specdec.core.model_config import load_config
from specdec.engine.local import DTYPES, default_device, default_dtype
from specdec.engine.tp.launch import Leader, TPSpec, rank_devices, run_node, start_leader
from specdec.serving.server import Running

log = logging.getLogger("specdec.verifier")

EXIT_RANK_LOST = 3  # the process's exit status when a rank died
STOP_GRACE_S = 1.0  # in-flight streams get this long to see their UNAVAILABLE
HARD_EXIT_S = 10.0  # past this, exit even if a step hangs in a collective


@dataclass(frozen=True)
class TensorParallel:
    """How the target is split (all defaults: one device, no tensor parallelism)."""

    ranks: int = 1  # ranks on this node, one device each (--tensor-parallel)
    devices: str = ""  # --devices: comma-separated, one per rank; default cuda:0..N-1 or cpu
    nodes: int = 1  # nodes in one replica's group (--tp-nodes)
    node_rank: int = 0  # this node's index (--tp-node-rank); node 0 serves gRPC
    master: str = ""  # --tp-master host:port of rank 0's rendezvous; "" = loopback, any port

    @property
    def enabled(self) -> bool:
        return self.ranks * self.nodes > 1


def spec(
    model: str, tp: TensorParallel, device: str | None, dtype: str | None, slots: int, max_len: int
) -> TPSpec:
    """The launch spec of this node's ranks."""
    device = device or default_device()
    if tp.nodes > 1 and not tp.master:
        raise ValueError("--tp-nodes > 1 needs --tp-master HOST:PORT (node 0's address)")
    return TPSpec(
        model,
        local_ranks=tp.ranks,
        devices=rank_devices(tp.ranks, device, tp.devices),
        dtype=DTYPES[dtype] if dtype else default_dtype(device),
        num_slots=slots,
        max_seq_len=min(max_len, load_config(model).max_position_embeddings),
        nodes=tp.nodes,
        node_rank=tp.node_rank,
        master=tp.master,
    )


def start(launch: TPSpec) -> Leader:
    """Spawn this node's other ranks and join as rank 0 (blocking: run it off the loop)."""
    log.info("target over %d tensor-parallel ranks (%s)", launch.world, ", ".join(launch.devices))
    return start_leader(launch)


def watch(leader: Leader, running: Running) -> None:
    """Take the replica down whole when a rank dies; close the ranks when it stops."""
    loop = asyncio.get_running_loop()

    async def close() -> None:
        await asyncio.to_thread(leader.close)

    async def go_down(why: str) -> None:
        log.error("a tensor-parallel rank died (%s): NOT_SERVING, exiting to be restarted", why)
        await running.set_serving(False)
        await asyncio.sleep(STOP_GRACE_S)
        try:
            await asyncio.wait_for(running.stop(STOP_GRACE_S), HARD_EXIT_S)
        finally:
            os._exit(EXIT_RANK_LOST)

    def lost(why: str) -> None:
        threading.Timer(HARD_EXIT_S + STOP_GRACE_S * 2, os._exit, (EXIT_RANK_LOST,)).start()
        loop.call_soon_threadsafe(lambda: loop.create_task(go_down(why)))

    leader.watch(lost)
    running.on_stop.append(close)


def run_follower_node(launch: TPSpec) -> None:
    """Nodes 1..M-1: this node's ranks, no gRPC, until rank 0 stops the group."""
    raise SystemExit(run_node(launch))
