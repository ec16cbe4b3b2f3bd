"""A slot-based key/value cache: one preallocated slab per layer, one slot per active session.

Each slot holds a sequence's keys and values at the positions they were computed for, and a
length: how many leading positions are valid. Rolling back moves the length and copies nothing;
the next forward overwrites what lies past it (gpt-fast's fixed buffer, with slots for batching).

Verbs: ``allocate`` a slot, ``append`` (advance the length after a forward wrote the positions),
``rollback_to`` a shorter length, ``copy`` positions from another slot (draft-ahead forks a
branch off a sequence this way), ``free`` the slot. Only the engine moves positions.
Non-goals: paging, prefix sharing between slots, eviction policy (the services decide that).
"""

from __future__ import annotations

import torch

from specdec.core.errors import InvalidRequest, OutOfSlots


class KVCache:
    """Keys and values of ``num_slots`` sequences of up to ``max_seq_len`` tokens each."""

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        max_seq_len: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if num_slots <= 0 or max_seq_len <= 0:
            raise ValueError("num_slots and max_seq_len must be positive")
        shape = (num_slots, max_seq_len, num_kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self._lengths = [0] * num_slots
        self._free = list(range(num_slots - 1, -1, -1))  # pop() hands out slot 0 first
        self._in_use: set[int] = set()

    # --- bookkeeping verbs -------------------------------------------------------------------

    def allocate(self) -> int:
        """Take a free slot (length 0). Raises ``OutOfSlots`` when none is left."""
        if not self._free:
            raise OutOfSlots(f"all {self.num_slots} KV-cache slots are in use")
        slot = self._free.pop()
        self._in_use.add(slot)
        self._lengths[slot] = 0
        return slot

    def free(self, slot: int) -> None:
        """Give ``slot`` back. Freeing a slot twice is an error (it hides double bookkeeping)."""
        self._check(slot)
        self._in_use.remove(slot)
        self._lengths[slot] = 0
        self._free.append(slot)

    def length(self, slot: int) -> int:
        """Number of valid leading positions in ``slot``."""
        self._check(slot)
        return self._lengths[slot]

    def append(self, slot: int, num_tokens: int) -> None:
        """Mark ``num_tokens`` more positions valid (the forward has written them)."""
        self._check(slot)
        new_len = self._lengths[slot] + num_tokens
        if num_tokens < 0 or new_len > self.max_seq_len:
            raise InvalidRequest(
                "positions",
                f"slot {slot} cannot grow to {new_len} tokens (capacity {self.max_seq_len})",
            )
        self._lengths[slot] = new_len

    def rollback_to(self, slot: int, length: int) -> None:
        """Forget every position at or after ``length``. Copies nothing."""
        self._check(slot)
        if not 0 <= length <= self._lengths[slot]:
            raise InvalidRequest(
                "position",
                f"cannot roll slot {slot} back to {length}: it holds {self._lengths[slot]} tokens",
            )
        self._lengths[slot] = length

    def copy(self, src: int, dst: int, start: int, end: int) -> None:
        """Make ``dst`` hold ``src``'s positions [start, end) after its own first ``start``.

        ``dst`` must hold at least ``start`` positions (it keeps them) and ``src`` at least
        ``end``; ``dst``'s length becomes ``end``.
        """
        self._check(src)
        self._check(dst)
        if not 0 <= start <= min(self._lengths[dst], end) or end > self._lengths[src]:
            raise InvalidRequest(
                "position",
                f"cannot copy [{start}, {end}) from slot {src} ({self._lengths[src]} tokens) "
                f"to slot {dst} ({self._lengths[dst]} tokens)",
            )
        for layer in range(len(self.keys)):
            self.keys[layer][dst, start:end] = self.keys[layer][src, start:end]
            self.values[layer][dst, start:end] = self.values[layer][src, start:end]
        self._lengths[dst] = end

    @property
    def slots_in_use(self) -> int:
        return len(self._in_use)

    @property
    def slots_free(self) -> int:
        return len(self._free)

    def _check(self, slot: int) -> None:
        if slot not in self._in_use:
            raise InvalidRequest("slot", f"KV-cache slot {slot} is not allocated")

    # --- tensor access for the model ------------------------------------------------------------

    def write(
        self,
        layer: int,
        slots: torch.Tensor,
        positions: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        """Store one layer's new keys and values at their slots and positions.

        slots, positions [T] int64; keys, values [T, Hkv, D].
        """
        self.keys[layer][slots, positions] = keys
        self.values[layer][slots, positions] = values

    def read(
        self, layer: int, slot_ids: torch.Tensor, context_len: int, single_slot: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """First ``context_len`` positions of each slot.  # slot_ids [B] → 2 x [B, S, Hkv, D]

        With ``single_slot`` (B == 1) the result is a view of the slab, not a copy.
        """
        if single_slot is not None:
            s = single_slot
            return (
                self.keys[layer][s : s + 1, :context_len],
                self.values[layer][s : s + 1, :context_len],
            )
        return (
            self.keys[layer][slot_ids, :context_len],
            self.values[layer][slot_ids, :context_len],
        )
