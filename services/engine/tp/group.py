"""Process-group setup and teardown for the ranks of one tensor-parallel model.

Two groups over the same ranks: the *compute* group (NCCL on GPUs, gloo on CPUs) carries the
forward's all-reduces and all-gathers under a short timeout, so a lost peer fails a step
instead of hanging it; the *control* group (always gloo, CPU tensors) carries rank 0's step
messages, under a long timeout, since a follower waits on it for as long as the replica idles.
Non-goals: elastic membership (a lost rank ends the group; the supervisor restarts it whole).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

COMPUTE_TIMEOUT_S = 60.0  # one collective of a forward; past it the step fails
CONTROL_TIMEOUT_S = 7 * 24 * 3600.0  # a follower waiting for the next step


@dataclass(frozen=True)
class RankGroup:
    """This process's place in the tensor-parallel group."""

    rank: int
    world: int
    device: torch.device
    control: dist.ProcessGroup  # gloo: rank 0's step messages

    @property
    def leader(self) -> bool:
        return self.rank == 0


def join(
    master: str,
    rank: int,
    world: int,
    device: torch.device,
    compute_timeout_s: float = COMPUTE_TIMEOUT_S,
) -> RankGroup:
    """Join the group rendezvousing at ``master`` (host:port, rank 0 listens there)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{master}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=compute_timeout_s),
    )
    control = dist.new_group(backend="gloo", timeout=timedelta(seconds=CONTROL_TIMEOUT_S))
    return RankGroup(rank, world, device, control)


def leave() -> None:
    """Tear the group down (idempotent)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def free_master(host: str = "127.0.0.1") -> str:
    """host:port of a free port on ``host``, for a group whose ranks all run on this machine."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return f"{host}:{sock.getsockname()[1]}"
