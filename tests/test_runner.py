"""``ModelRunner.step``: what it returns, and every malformed chunk it refuses.

A refused step must name the offending field (``InvalidRequest.field``) and leave the cache as it
was, so the caller can fix the request and retry.
Non-goals: numerics (see ``test_model_hf.py``).
"""

from __future__ import annotations

import pytest
import torch
from fixtures import micro_config

from specdec.core.errors import InvalidRequest, SpecdecError
from specdec.engine.batch import Chunk
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

pytestmark = pytest.mark.unit

VOCAB, MAX_LEN = 48, 32


@pytest.fixture(scope="module")
def model() -> DecoderModel:
    """A one-layer random model built in memory (no checkpoint, no transformers)."""
    cfg = micro_config(vocab_size=VOCAB, num_hidden_layers=1, max_position_embeddings=64)
    torch.manual_seed(0)
    return DecoderModel(cfg).eval().requires_grad_(False)


@pytest.fixture
def runner(model: DecoderModel) -> ModelRunner:
    return ModelRunner(model, num_slots=3, max_seq_len=MAX_LEN)


def refused(runner: ModelRunner, chunks: list[Chunk]) -> str:
    """The ``field`` of the ``InvalidRequest`` that ``step`` raises."""
    with pytest.raises(InvalidRequest) as info:
        runner.step(chunks)
    assert isinstance(info.value, SpecdecError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{info.value.field}: ")
    return info.value.field


# --- what a step returns --------------------------------------------------------------------------


def test_step_returns_requested_logits_and_advances_lengths(runner: ModelRunner) -> None:
    a, b, c = (runner.cache.allocate() for _ in range(3))
    out = runner.step(
        [
            Chunk(a, [1, 2, 3, 4], 0, num_logits=4),
            Chunk(b, [5, 6], 0, num_logits=1),
            Chunk(c, [7, 8, 9], 0, num_logits=0),
        ]
    )
    assert [o.shape for o in out] == [(4, VOCAB), (1, VOCAB), (0, VOCAB)]
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out)
    assert [runner.cache.length(s) for s in (a, b, c)] == [4, 2, 3]


def test_empty_step_is_a_no_op(runner: ModelRunner) -> None:
    assert runner.step([]) == []


def test_exactly_full_context_is_allowed(runner: ModelRunner) -> None:
    slot = runner.cache.allocate()
    runner.step([Chunk(slot, [1] * (MAX_LEN - 1), 0, num_logits=0)])
    runner.step([Chunk(slot, [2], MAX_LEN - 1)])
    assert runner.cache.length(slot) == runner.max_seq_len == MAX_LEN


def test_step_after_rollback_continues_from_the_kept_length(runner: ModelRunner) -> None:
    slot = runner.cache.allocate()
    runner.step([Chunk(slot, [1, 2, 3, 4, 5], 0, num_logits=0)])
    runner.cache.rollback_to(slot, 3)
    assert refused(runner, [Chunk(slot, [9], 5)]) == "position"
    runner.step([Chunk(slot, [9], 3)])
    assert runner.cache.length(slot) == 4


# --- what a step refuses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk", "field"),
    [
        (Chunk(0, [1, 2], start_pos=3), "position"),  # slot 0 holds 4 tokens
        (Chunk(0, [1, 2], start_pos=0), "position"),
        (Chunk(0, [1, VOCAB], start_pos=4), "token_ids"),
        (Chunk(0, [-1], start_pos=4), "token_ids"),
        (Chunk(0, [1] * (MAX_LEN - 3), start_pos=4), "token_ids"),  # 4 + 29 > 32
        (Chunk(0, [], start_pos=4, num_logits=0), "token_ids"),
        (Chunk(0, [1, 2], start_pos=4, num_logits=3), "num_logits"),
        (Chunk(0, [1, 2], start_pos=4, num_logits=-1), "num_logits"),
        (Chunk(2, [1], start_pos=0), "slot"),  # never allocated
        (Chunk(7, [1], start_pos=0), "slot"),  # not a slot at all
    ],
    ids=[
        "start-behind",
        "start-at-zero",
        "id-too-big",
        "id-negative",
        "past-context",
        "no-tokens",
        "too-many-logits",
        "negative-logits",
        "unallocated",
        "out-of-range",
    ],
)
def test_malformed_chunk_is_refused_and_changes_nothing(
    runner: ModelRunner, chunk: Chunk, field: str
) -> None:
    slot, other = runner.cache.allocate(), runner.cache.allocate()
    assert (slot, other) == (0, 1)  # the chunks above name slot 0
    runner.step([Chunk(slot, [1, 2, 3, 4], 0, num_logits=0)])
    keys_before = runner.cache.keys[0].clone()
    # A good chunk for another slot rides along: it must not run either.
    assert refused(runner, [Chunk(other, [5, 6], 0), chunk]) == field
    assert (runner.cache.length(slot), runner.cache.length(other)) == (4, 0)
    assert torch.equal(runner.cache.keys[0], keys_before)


def test_same_slot_twice_in_one_step(runner: ModelRunner) -> None:
    slot = runner.cache.allocate()
    assert refused(runner, [Chunk(slot, [1], 0), Chunk(slot, [2], 1)]) == "slot"
    assert runner.cache.length(slot) == 0


def test_freed_slot_is_refused(runner: ModelRunner) -> None:
    slot = runner.cache.allocate()
    runner.step([Chunk(slot, [1, 2], 0)])
    runner.cache.free(slot)
    assert refused(runner, [Chunk(slot, [3], 2)]) == "slot"
