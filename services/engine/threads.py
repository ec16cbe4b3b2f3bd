"""How many CPU threads torch may use in this process: the container's CPU quota, not the host's.

torch sizes its intra-op pool from the host's cores, so a pod limited to 2 CPUs on a 64-core node
runs 64 threads that fight over 2 CPUs. ``usable_cpus`` reads the cgroup quota (v2 ``cpu.max``,
v1 ``cpu.cfs_quota_us``) and the affinity mask; ``set_cpu_threads`` applies it (or an explicit
count) to torch. Non-goals: inter-op threads, NUMA placement.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

CGROUP = Path("/sys/fs/cgroup")


def _quota_cpus(cgroup: Path) -> float | None:
    """CPUs granted by the cgroup quota, or None when unlimited or unreadable."""
    try:  # v2: "max 100000" or "200000 100000"
        quota, period = (cgroup / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # v1: -1 means unlimited
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may run on: affinity mask capped by the cgroup quota (rounded up)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every core counts
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    quota = _quota_cpus(cgroup)
    return max(1, cpus if quota is None else min(cpus, math.ceil(quota)))


def set_cpu_threads(threads: int | None) -> int:
    """Size torch's intra-op pool: ``threads`` when given, else ``usable_cpus()``; returns it."""
    n = threads if threads else usable_cpus()
    torch.set_num_threads(n)
    return n
