"""A target model over N ranks: rank 0 runs the steps, the others follow them.

Rank 0 (the *leader*) keeps everything a single-device verifier keeps: the batch loop, the
``KVCache`` bookkeeping (which slots are in use, their lengths). ``TPRunner`` is a
``ModelRunner`` whose ``step`` first broadcasts the step's chunks (slots, start positions, token
ids, logits wanted) to the other ranks over the control group; every rank then runs the same
forward, so each writes the keys and values of its own KV heads at the same slots and positions.
Rollbacks and frees need no message: the cache is addressed by position, so a follower's next
write simply overwrites what the leader forgot, exactly as on one device (the leader checks
every chunk starts where its slot ends before broadcasting it).
A rank that dies makes the leader's next (or current) collective fail; the leader then raises
``Unavailable`` for that step and every later one. ``follow`` is the followers' loop.
Non-goals: process spawning and watching (``launch.py``), the gRPC side (``verifier.app``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch
import torch.distributed as dist

from specdec.core.errors import InvalidRequest, Unavailable
from specdec.engine.batch import Chunk, ForwardBatch
from specdec.engine.runner import ModelRunner
from specdec.engine.tp.group import RankGroup
from specdec.engine.tp.model import TPDecoder

log = logging.getLogger("specdec.tp")

_STOP, _STEP = 0, 1  # message kinds


def encode(chunks: Sequence[Chunk]) -> torch.Tensor:
    """One step as a flat int64 tensor: per chunk slot, start, logits, n, then n token ids."""
    flat: list[int] = []
    for c in chunks:
        flat += [c.slot, c.start_pos, c.num_logits, len(c.token_ids), *c.token_ids]
    return torch.tensor(flat, dtype=torch.int64)


def decode(flat: torch.Tensor) -> list[Chunk]:
    """The inverse of ``encode``.  # flat [M] int64"""
    values = flat.tolist()
    chunks, i = [], 0
    while i < len(values):
        slot, start, logits, n = values[i : i + 4]
        chunks.append(Chunk(slot, values[i + 4 : i + 4 + n], start, logits))
        i += 4 + n
    return chunks


def _send(group: RankGroup, kind: int, payload: torch.Tensor) -> None:
    header = torch.tensor([kind, payload.numel()], dtype=torch.int64)
    dist.broadcast(header, src=0, group=group.control)
    if payload.numel():
        dist.broadcast(payload, src=0, group=group.control)


def _receive(group: RankGroup) -> tuple[int, torch.Tensor]:
    header = torch.empty(2, dtype=torch.int64)
    dist.broadcast(header, src=0, group=group.control)
    kind, size = header.tolist()
    payload = torch.empty(size, dtype=torch.int64)
    if size:
        dist.broadcast(payload, src=0, group=group.control)
    return kind, payload


class RankLost(Unavailable):
    """A rank of the tensor-parallel group is gone; the replica must be restarted whole."""


class TPRunner(ModelRunner):
    """The leader's runner: every step is broadcast, then run on all ranks at once."""

    returns_hidden = False  # ``step_hidden`` would run on rank 0 alone

    def __init__(
        self,
        model: TPDecoder,
        group: RankGroup,
        num_slots: int = 8,
        max_seq_len: int | None = None,
    ) -> None:
        if not group.leader:
            raise ValueError("only rank 0 runs steps; the other ranks call follow()")
        super().__init__(model, num_slots, max_seq_len, compile=False)  # type: ignore[arg-type]
        self.group = group
        self.lost: str | None = None  # why the group is broken, once it is

    def step(self, chunks: Sequence[Chunk]) -> list[torch.Tensor]:
        """``ModelRunner.step`` on every rank.  # → [num_logits, V] fp32 each"""
        if not chunks:
            return []
        if self.lost is not None:
            raise RankLost(f"tensor-parallel verifier lost a rank ({self.lost}); restarting")
        self._validate(chunks)  # followers only ever see valid steps
        try:
            _send(self.group, _STEP, encode(chunks))
            return super().step(chunks)
        except Exception as exc:  # a peer closed its connection, a timeout, or the ranks diverged
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            self.mark_lost(f"{type(exc).__name__}: {first_line}")
            raise RankLost(
                f"tensor-parallel step failed, the ranks are out of step ({self.lost})"
            ) from exc

    def step_hidden(self, chunks: Sequence[Chunk]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        raise InvalidRequest("hidden_states", "a tensor-parallel verifier returns none")

    def mark_lost(self, why: str) -> None:
        """Refuse every step from now on (the watchdog calls this when a rank process dies)."""
        if self.lost is None:
            log.error("tensor-parallel group broken: %s", why)
            self.lost = why

    def stop_followers(self) -> None:
        """Tell the other ranks to leave their loop (best effort: they may be gone)."""
        if self.lost is None:
            with contextlib.suppress(RuntimeError):  # DistError is one
                _send(self.group, _STOP, torch.empty(0, dtype=torch.int64))


def follow(model: TPDecoder, group: RankGroup, num_slots: int, max_seq_len: int) -> None:
    """A follower's loop: run each step rank 0 broadcasts, until it says stop.

    The cache has the leader's slots and length but no bookkeeping of its own: chunks arrive
    already checked, and write where the leader's say.
    """
    cache = model.new_cache(num_slots, max_seq_len)
    sliding = model.config.sliding_window
    while True:
        kind, payload = _receive(group)
        if kind == _STOP:
            return
        batch = ForwardBatch.build(decode(payload), group.device, sliding)
        with torch.inference_mode():
            model(batch, cache)
