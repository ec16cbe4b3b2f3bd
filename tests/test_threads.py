"""``usable_cpus``: the container's CPU quota caps torch's thread pool (cgroup v1 and v2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from specdec.engine.threads import set_cpu_threads, usable_cpus

pytestmark = pytest.mark.unit

AFFINITY = len(os.sched_getaffinity(0))


def cgroup_v2(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def cgroup_v1(tmp_path: Path, quota_us: int, period_us: int = 100000) -> Path:
    (tmp_path / "cpu").mkdir(parents=True)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period_us}\n")
    return tmp_path


def test_v2_quota_of_one_and_a_half_cpus_gives_at_most_two(tmp_path: Path) -> None:
    assert usable_cpus(cgroup_v2(tmp_path, "150000 100000")) == min(2, AFFINITY)


def test_v2_quota_below_one_cpu_still_gives_one(tmp_path: Path) -> None:
    assert usable_cpus(cgroup_v2(tmp_path, "20000 100000")) == 1


def test_unlimited_or_missing_quota_falls_back_to_the_affinity_mask(tmp_path: Path) -> None:
    assert usable_cpus(cgroup_v2(tmp_path, "max 100000")) == AFFINITY
    assert usable_cpus(tmp_path / "no-such-cgroup") == AFFINITY


def test_v1_quota(tmp_path: Path) -> None:
    assert usable_cpus(cgroup_v1(tmp_path / "one", 100000)) == 1
    assert usable_cpus(cgroup_v1(tmp_path / "unlimited", -1)) == AFFINITY


def test_explicit_count_wins() -> None:
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(3) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
