"""Start the ranks of a tensor-parallel model as processes, one device each, and watch them.

``start_leader`` (node 0) spawns local ranks 1..N-1 with ``torch.multiprocessing``, joins the
group as rank 0 and returns its ``TPRunner``; ``run_node`` (nodes 1..M-1 of a multi-node group)
spawns its ranks and follows in the foreground. Global rank = node rank x ranks per node +
local rank. On a CPU each local rank is pinned to its own share of this process's CPUs, with
that many torch threads; on GPUs rank i uses ``cuda:i`` unless devices are given.
``Watchdog`` polls the rank processes and reports the first that dies, so a rank killed while
its peers wait is noticed even before a collective times out.
Non-goals: restarting a lost rank in place (the replica restarts whole), scheduling over nodes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

import torch
import torch.multiprocessing as mp

from specdec.core.model_config import load_config
from specdec.engine.tp.group import RankGroup, free_master, join, leave
from specdec.engine.tp.loading import load_tp_model
from specdec.engine.tp.ranks import TPRunner, follow
from specdec.engine.tp.sharding import plan

log = logging.getLogger("specdec.tp")


@dataclass(frozen=True)
class TPSpec:
    """One tensor-parallel model's ranks on this node."""

    model: str  # Hugging Face folder, readable on every node
    local_ranks: int  # ranks on this node (--tensor-parallel)
    devices: tuple[str, ...]  # one per local rank: cpu, cuda:0 ...
    dtype: torch.dtype
    num_slots: int
    max_seq_len: int
    nodes: int = 1  # nodes in the group (--tp-nodes)
    node_rank: int = 0  # this node's place (--tp-node-rank); node 0 serves gRPC
    master: str = ""  # host:port rank 0 listens on for the rendezvous; "" = loopback, free port
    cpu_sets: tuple[tuple[int, ...], ...] = ()  # per local rank; () = split this process's CPUs

    @property
    def world(self) -> int:
        return self.nodes * self.local_ranks

    def global_rank(self, local: int) -> int:
        return self.node_rank * self.local_ranks + local


def rank_devices(n: int, device: str, devices: str = "") -> tuple[str, ...]:
    """``--devices`` (comma-separated, n of them), else ``cuda:0..n-1`` on GPUs, else n x cpu."""
    if devices:
        listed = tuple(d.strip() for d in devices.split(",") if d.strip())
        if len(listed) != n:
            raise ValueError(f"--devices names {len(listed)} devices for {n} ranks")
        return listed
    if device.startswith("cuda"):
        return tuple(f"cuda:{i}" for i in range(n))
    return ("cpu",) * n


def split_cpus(n: int) -> tuple[tuple[int, ...], ...]:
    """This process's CPUs in ``n`` contiguous sets (each rank gets all when there are fewer)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < n:
        return (tuple(cpus),) * n
    per = len(cpus) // n
    return tuple(tuple(cpus[i * per : (i + 1) * per]) for i in range(n))


def _place(spec: TPSpec, local: int) -> torch.device:
    """Pin this process to its CPUs (on a CPU) and return its device."""
    device = torch.device(spec.devices[local])
    if device.type == "cpu":
        cpus = (spec.cpu_sets or split_cpus(spec.local_ranks))[local]
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(len(cpus))
    return device


def _follower(spec: TPSpec, local: int) -> None:
    """A spawned rank's whole life: join, load its slices, follow rank 0, leave."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = _place(spec, local)
    group = join(spec.master, spec.global_rank(local), spec.world, device)
    model = load_tp_model(spec.model, spec.world, group.rank, spec.dtype, device)
    try:
        follow(model, group, spec.num_slots, spec.max_seq_len)
    finally:
        leave()


def _spawn(spec: TPSpec, locals_: range) -> list[BaseProcess]:
    ctx = mp.get_context("spawn")
    procs: list[BaseProcess] = []
    for local in locals_:
        proc = ctx.Process(target=_follower, args=(spec, local), daemon=True)
        proc.start()
        procs.append(proc)
    return procs


@dataclass
class Leader:
    """Rank 0's runner and the rank processes this node started."""

    runner: TPRunner
    processes: list[BaseProcess]
    watchdog: Watchdog | None = None

    def watch(self, on_lost: Callable[[str], object]) -> None:
        """Call ``on_lost(why)`` (from a thread) when a rank process dies; the runner refuses
        steps from then on."""

        def lost(why: str) -> None:
            self.runner.mark_lost(why)
            on_lost(why)

        self.watchdog = Watchdog(self.processes, lost)
        self.watchdog.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the followers and leave the group."""
        if self.watchdog is not None:
            self.watchdog.stop()
        self.runner.stop_followers()
        for proc in self.processes:
            proc.join(timeout_s)
            if proc.is_alive():
                proc.kill()
        leave()


def start_leader(spec: TPSpec) -> Leader:
    """Spawn local ranks 1..N-1, join as rank 0, load rank 0's slices (node 0 only)."""
    if spec.node_rank != 0:
        raise ValueError("only node 0 runs rank 0; other nodes call run_node")
    plan(load_config(spec.model), spec.world, 0)  # a split that cannot work fails here, once
    if not spec.master:
        spec = _with_master(spec, free_master())
    procs = _spawn(spec, range(1, spec.local_ranks))
    device = _place(spec, 0)
    group: RankGroup = join(spec.master, 0, spec.world, device)
    log.info("tensor-parallel group of %d ranks joined at %s", spec.world, spec.master)
    model = load_tp_model(spec.model, spec.world, 0, spec.dtype, device)
    runner = TPRunner(model, group, spec.num_slots, spec.max_seq_len)
    return Leader(runner, procs)


def run_node(spec: TPSpec) -> int:
    """A node other than 0: spawn its ranks and follow as its first, until rank 0 says stop
    (0) or a rank dies (the process exits 1)."""
    plan(load_config(spec.model), spec.world, spec.global_rank(0))
    procs = _spawn(spec, range(1, spec.local_ranks))

    def lost(why: str) -> None:
        log.error("tensor-parallel node %d: %s; leaving", spec.node_rank, why)
        os._exit(1)  # the main thread may be blocked in a collective

    watchdog = Watchdog(procs, lost)
    watchdog.start()
    try:
        _follower(spec, 0)
    finally:
        watchdog.stop()
        for proc in procs:
            proc.join(5.0)
    return 0


def _with_master(spec: TPSpec, master: str) -> TPSpec:
    from dataclasses import replace

    return replace(spec, master=master)


class Watchdog:
    """Calls ``on_lost(why)`` once, from its own thread, when a watched process dies (exits
    other than 0: a rank exits 0 only when rank 0 told it to stop)."""

    def __init__(
        self, processes: list[BaseProcess], on_lost: Callable[[str], object], poll_s: float = 0.2
    ) -> None:
        self.processes = processes
        self.on_lost = on_lost
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tp-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            for proc in self.processes:
                if not proc.is_alive() and proc.exitcode != 0:  # 0: it was told to stop
                    self.on_lost(f"rank process {proc.pid} exited (code {proc.exitcode})")
                    return
