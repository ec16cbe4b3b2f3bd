"""The slot cache's verbs, one test each: allocate, append, rollback_to, free, write/read.

Non-goals: attention over the cache (see ``test_model_hf.py``, "rollback then overwrite").
"""

from __future__ import annotations

import pytest
import torch

from specdec.core.errors import InvalidRequest, OutOfSlots, SpecdecError
from specdec.engine.kv_cache import KVCache

pytestmark = pytest.mark.unit

LAYERS, SLOTS, MAX_LEN, KV_HEADS, HEAD_DIM = 2, 3, 16, 2, 4


@pytest.fixture
def cache() -> KVCache:
    return KVCache(LAYERS, SLOTS, MAX_LEN, KV_HEADS, HEAD_DIM)


def kv(n: int, fill: float) -> torch.Tensor:  # → [n, Hkv, D]
    return torch.full((n, KV_HEADS, HEAD_DIM), fill)


def test_preallocated_shapes(cache: KVCache) -> None:
    assert len(cache.keys) == len(cache.values) == LAYERS
    assert cache.keys[0].shape == (SLOTS, MAX_LEN, KV_HEADS, HEAD_DIM)
    assert cache.keys[0].dtype == torch.float32
    bf16 = KVCache(1, 1, 4, 1, 2, dtype=torch.bfloat16)
    assert bf16.values[0].dtype == torch.bfloat16


@pytest.mark.parametrize(("slots", "max_len"), [(0, 4), (2, 0)])
def test_rejects_empty_cache(slots: int, max_len: int) -> None:
    with pytest.raises(ValueError):
        KVCache(1, slots, max_len, 1, 2)


# --- allocate / free ------------------------------------------------------------------------------


def test_allocate_hands_out_distinct_empty_slots(cache: KVCache) -> None:
    slots = [cache.allocate() for _ in range(SLOTS)]
    assert sorted(slots) == list(range(SLOTS))
    assert all(cache.length(s) == 0 for s in slots)
    assert (cache.slots_in_use, cache.slots_free) == (SLOTS, 0)


def test_allocate_when_full_raises_out_of_slots(cache: KVCache) -> None:
    for _ in range(SLOTS):
        cache.allocate()
    with pytest.raises(OutOfSlots) as info:
        cache.allocate()
    assert isinstance(info.value, SpecdecError)
    assert not isinstance(info.value, InvalidRequest)  # overload, not a bad request
    assert str(SLOTS) in str(info.value)


def test_free_returns_the_slot_with_length_zero(cache: KVCache) -> None:
    slots = [cache.allocate() for _ in range(SLOTS)]
    cache.append(slots[1], 5)
    cache.free(slots[1])
    assert (cache.slots_in_use, cache.slots_free) == (SLOTS - 1, 1)
    again = cache.allocate()
    assert again == slots[1]
    assert cache.length(again) == 0


def test_free_twice_is_an_error(cache: KVCache) -> None:
    slot = cache.allocate()
    cache.free(slot)
    with pytest.raises(InvalidRequest) as info:
        cache.free(slot)
    assert info.value.field == "slot"
    assert cache.slots_free == SLOTS  # the failed free changed nothing


@pytest.mark.parametrize("slot", [1, -1, SLOTS, 99])
def test_unallocated_slot_is_refused_by_every_verb(cache: KVCache, slot: int) -> None:
    cache.allocate()  # slot 0
    for verb in (
        cache.length,
        cache.free,
        lambda s: cache.append(s, 1),
        lambda s: cache.rollback_to(s, 0),
    ):
        with pytest.raises(InvalidRequest) as info:
            verb(slot)
        assert info.value.field == "slot"


# --- append / rollback_to -------------------------------------------------------------------------


def test_append_advances_length(cache: KVCache) -> None:
    slot = cache.allocate()
    cache.append(slot, 4)
    cache.append(slot, 1)
    cache.append(slot, 0)
    assert cache.length(slot) == 5


@pytest.mark.parametrize("num_tokens", [MAX_LEN + 1, -1])
def test_append_out_of_range_is_refused(cache: KVCache, num_tokens: int) -> None:
    slot = cache.allocate()
    with pytest.raises(InvalidRequest):
        cache.append(slot, num_tokens)
    assert cache.length(slot) == 0


def test_append_up_to_capacity_then_no_more(cache: KVCache) -> None:
    slot = cache.allocate()
    cache.append(slot, MAX_LEN - 1)
    cache.append(slot, 1)
    with pytest.raises(InvalidRequest):
        cache.append(slot, 1)
    assert cache.length(slot) == MAX_LEN


def test_rollback_to_shorter_same_and_zero(cache: KVCache) -> None:
    slot = cache.allocate()
    cache.append(slot, 10)
    cache.rollback_to(slot, 7)
    assert cache.length(slot) == 7
    cache.rollback_to(slot, 7)  # a no-op, not an error
    assert cache.length(slot) == 7
    cache.rollback_to(slot, 0)
    assert cache.length(slot) == 0


@pytest.mark.parametrize("length", [6, -1])
def test_rollback_beyond_length_is_refused(cache: KVCache, length: int) -> None:
    slot = cache.allocate()
    cache.append(slot, 5)
    with pytest.raises(InvalidRequest) as info:
        cache.rollback_to(slot, length)
    assert info.value.field == "position"
    assert cache.length(slot) == 5


def test_slots_are_independent(cache: KVCache) -> None:
    a, b = cache.allocate(), cache.allocate()
    cache.append(a, 3)
    cache.append(b, 8)
    cache.rollback_to(b, 2)
    assert (cache.length(a), cache.length(b)) == (3, 2)


# --- write / read ---------------------------------------------------------------------------------


def test_write_then_read_by_position(cache: KVCache) -> None:
    a, b = cache.allocate(), cache.allocate()
    slots = torch.tensor([a, a, a, b, b])
    positions = torch.tensor([0, 1, 2, 0, 1])
    keys = torch.arange(5.0)[:, None, None].expand(5, KV_HEADS, HEAD_DIM)  # [T, Hkv, D]
    cache.write(1, slots, positions, keys, -keys)
    k, v = cache.read(1, torch.tensor([b, a]), context_len=3)  # [B, S, Hkv, D]
    assert k.shape == (2, 3, KV_HEADS, HEAD_DIM)
    assert k[:, :, 0, 0].tolist() == [[3.0, 4.0, 0.0], [0.0, 1.0, 2.0]]
    assert torch.equal(v, -k)
    assert cache.keys[0].abs().sum() == 0  # other layers untouched


def test_single_slot_read_is_a_view(cache: KVCache) -> None:
    slot = cache.allocate()
    cache.write(0, torch.tensor([slot] * 2), torch.tensor([0, 1]), kv(2, 1.0), kv(2, 2.0))
    k, v = cache.read(0, torch.tensor([slot]), context_len=2, single_slot=slot)
    assert k.shape == v.shape == (1, 2, KV_HEADS, HEAD_DIM)
    assert k.untyped_storage().data_ptr() == cache.keys[0].untyped_storage().data_ptr()
    assert v.untyped_storage().data_ptr() == cache.values[0].untyped_storage().data_ptr()
    assert torch.equal(k, cache.read(0, torch.tensor([slot]), context_len=2)[0])


def test_rollback_copies_nothing_and_the_next_write_overwrites(cache: KVCache) -> None:
    slot = cache.allocate()
    cache.write(0, torch.tensor([slot] * 4), torch.arange(4), kv(4, 1.0), kv(4, 1.0))
    cache.append(slot, 4)
    cache.rollback_to(slot, 2)
    assert cache.keys[0][slot, :4].eq(1.0).all()  # stale positions 2, 3 still hold data
    cache.write(0, torch.tensor([slot]), torch.tensor([2]), kv(1, 5.0), kv(1, 5.0))
    cache.append(slot, 1)
    assert cache.keys[0][slot, :4, 0, 0].tolist() == [1.0, 1.0, 5.0, 1.0]
    assert cache.length(slot) == 3
