"""Unit tests of ``specdec.engine.sampling``: params, the warped distribution, seeded draws."""

from __future__ import annotations

import math

import pytest
import torch

from specdec.core.errors import InvalidRequest
from specdec.engine.rejection import draft_dense_probs
from specdec.engine.sampling import (
    STREAM_DRAFT,
    STREAM_TARGET,
    SamplingParams,
    greedy_token_ids,
    position_generator,
    position_seed,
    sample_sparse_token,
    sample_token,
    sparse_top,
    target_probs,
)

pytestmark = pytest.mark.unit


def _logits_for(probs: list[float]) -> torch.Tensor:
    """Logits [1, V] whose softmax is ``probs`` (zeros become -inf)."""
    return torch.tensor([probs], dtype=torch.float64).log().float()


# --- SamplingParams -------------------------------------------------------------------------


def test_default_params_are_greedy_and_valid() -> None:
    params = SamplingParams()
    params.validate()
    assert params.is_greedy
    assert SamplingParams(temperature=0.7, top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7).is_greedy


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": 100.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_p": math.nan}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
    ],
)
def test_validate_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**kwargs).validate()
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_validate_accepts_the_edges() -> None:
    SamplingParams(temperature=100.0, top_k=0, top_p=1.0, seed=0).validate()
    SamplingParams(temperature=1e-6, top_k=50, top_p=1e-9, seed=2**63 - 1).validate()


# --- target_probs ---------------------------------------------------------------------------


def test_greedy_is_one_hot_at_argmax_lowest_id_on_ties() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 3.0], [5.0, 1.0, 2.0, 0.0]])
    probs = target_probs(logits, SamplingParams())
    assert probs.dtype == torch.float32
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    assert greedy_token_ids(logits).tolist() == [1, 0]
    # top_k=1 is greedy too, and gives the same one-hot.
    assert torch.equal(target_probs(logits, SamplingParams(temperature=2.0, top_k=1)), probs)


def test_temperature_scales_logits() -> None:
    logits = torch.randn(3, 11, generator=torch.Generator().manual_seed(0))
    for temperature in (0.25, 1.0, 3.0):
        probs = target_probs(logits, SamplingParams(temperature=temperature))
        expected = torch.softmax(logits.double() / temperature, dim=-1)
        torch.testing.assert_close(probs.double(), expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_tiny_temperature_does_not_overflow() -> None:
    logits = torch.tensor([[1.0, 2.0, 1.5]])
    probs = target_probs(logits, SamplingParams(temperature=1e-30))
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0]]))


def test_top_k_keeps_exactly_k_largest() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    for k in (1, 2, 7, 49):
        probs = target_probs(logits, SamplingParams(temperature=1.0, top_k=k))
        assert ((probs > 0).sum(-1) == k).all()
        kept = probs > 0
        top = torch.topk(logits, k, dim=-1).indices
        assert kept.gather(1, top).all()
        expected = torch.softmax(logits.masked_fill(~kept, -math.inf).double(), dim=-1)
        torch.testing.assert_close(probs.double(), expected, rtol=1e-5, atol=1e-7)
    # k >= V is off.
    full = target_probs(logits, SamplingParams(temperature=1.0, top_k=50))
    torch.testing.assert_close(full, torch.softmax(logits, dim=-1))


def test_top_k_ties_keep_lowest_ids() -> None:
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    probs = target_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    torch.testing.assert_close(probs, torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]]))


def test_top_p_keeps_minimal_nucleus_including_boundary_token() -> None:
    logits = _logits_for([0.1, 0.45, 0.05, 0.25, 0.15])  # sorted: 0.45, 0.25, 0.15, 0.1, 0.05
    cases = {
        0.3: {1},  # 0.45 >= 0.3 already
        0.5: {1, 3},  # 0.45 < 0.5, +0.25 = 0.70: the boundary token 3 is kept
        0.69: {1, 3},  # 0.70 reaches 0.69
        0.71: {1, 3, 4},  # 0.70 falls short of 0.71 (exact ties are left to rounding)
        0.75: {1, 3, 4},  # 0.70 < 0.75, +0.15 = 0.85
        0.9: {1, 3, 4, 0},  # 0.85 < 0.9, +0.1 = 0.95
        0.99: {0, 1, 2, 3, 4},
        1e-6: {1},  # the top token is always kept
    }
    for top_p, nucleus in cases.items():
        probs = target_probs(logits, SamplingParams(temperature=1.0, top_p=top_p))[0]
        assert set(torch.nonzero(probs).flatten().tolist()) == nucleus, top_p
        base = torch.tensor([0.1, 0.45, 0.05, 0.25, 0.15])
        kept = torch.zeros(5, dtype=torch.bool)
        kept[list(nucleus)] = True
        torch.testing.assert_close(probs, torch.where(kept, base, 0.0) / base[kept].sum())


def test_top_k_then_top_p_on_the_renormalised_top_k() -> None:
    logits = _logits_for([0.4, 0.3, 0.2, 0.1])
    # Top-2 renormalised: 0.4/0.7 = 0.571 >= 0.55, so top_p keeps the top token only.
    probs = target_probs(logits, SamplingParams(temperature=1.0, top_k=2, top_p=0.55))
    torch.testing.assert_close(probs, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    probs = target_probs(logits, SamplingParams(temperature=1.0, top_k=3, top_p=0.6))
    torch.testing.assert_close(probs, torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))


def test_target_probs_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError):
        target_probs(torch.zeros(5), SamplingParams(temperature=1.0))


# --- seeded randomness ----------------------------------------------------------------------


def _draws(seed: int, position: int, stream: int) -> list[float]:
    return torch.rand(4, generator=position_generator(seed, position, stream)).tolist()


def test_position_generator_is_deterministic() -> None:
    assert _draws(7, 100, STREAM_TARGET) == _draws(7, 100, STREAM_TARGET)
    assert position_seed(7, 100, STREAM_TARGET) == position_seed(7, 100, STREAM_TARGET)


def test_position_generator_differs_by_seed_position_and_stream() -> None:
    base = _draws(7, 100, STREAM_TARGET)
    assert _draws(8, 100, STREAM_TARGET) != base
    assert _draws(7, 101, STREAM_TARGET) != base
    assert _draws(7, 100, STREAM_DRAFT) != base
    assert _draws(2**63 - 1, 0, 0) != _draws(0, 0, 0)
    seeds = {position_seed(s, pos, st) for s in range(4) for pos in range(256) for st in (1, 2)}
    assert len(seeds) == 4 * 256 * 2
    assert all(0 <= s < 2**32 for s in seeds)


def test_position_seed_rejects_negatives() -> None:
    with pytest.raises(ValueError):
        position_seed(-1, 0, 0)
    with pytest.raises(ValueError):
        position_seed(0, -1, 0)


def test_sample_token_reproducible_and_follows_probs() -> None:
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.2])

    def run(seed: int) -> list[int]:
        return [
            sample_token(probs, position_generator(seed, pos, STREAM_TARGET)) for pos in range(400)
        ]

    first = run(3)
    assert first == run(3)
    assert first != run(4)
    assert set(first) <= {1, 3, 4}
    counts = [first.count(t) / len(first) for t in (1, 3, 4)]
    assert counts == pytest.approx([0.5, 0.3, 0.2], abs=0.1)
    # fp32, fp64 and unnormalised rows give the same token for the same generator state.
    for row in (probs.double(), probs * 3.0):
        again = [sample_token(row, position_generator(3, pos, STREAM_TARGET)) for pos in range(400)]
        assert again == first


def test_sparse_top_renormalises_and_keeps_zeros() -> None:
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    ids, sparse = sparse_top(probs, 2)
    assert ids.dtype == torch.int64 and sparse.dtype == torch.float32
    assert ids.shape == sparse.shape == (3, 2)
    assert ids[0].tolist() == [1, 3]
    torch.testing.assert_close(sparse[0], torch.tensor([0.4, 0.3]) / 0.7)
    assert ids[1, 0].item() == 2
    assert sparse[1].tolist() == [1.0, 0.0]
    torch.testing.assert_close(sparse.sum(-1), torch.ones(3))
    assert torch.equal(sparse, probs.gather(1, ids) / probs.gather(1, ids).sum(-1, keepdim=True))
    ids, sparse = sparse_top(probs, 10)  # m > V: the whole row
    assert ids.shape == (3, 4)
    torch.testing.assert_close(sparse.sum(-1), torch.ones(3))
    with pytest.raises(ValueError):
        sparse_top(probs, 0)


def test_sparse_top_stops_once_the_kept_tokens_hold_the_mass() -> None:
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    ids, sparse = sparse_top(probs, 4, mass=0.65)
    assert ids.shape == sparse.shape == (3, 4)
    # 0.4 + 0.3 = 0.7 crosses 0.65: the crossing token stays, the rest are cut to 0.
    torch.testing.assert_close(sparse[0], torch.tensor([0.4, 0.3, 0.0, 0.0]) / 0.7)
    assert sparse[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # the top token is always kept
    torch.testing.assert_close(sparse[2], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))
    ids, sparse = sparse_top(probs, 1, mass=0.9)  # the width caps before the mass is reached
    assert ids[:2, 0].tolist() == [1, 2] and sparse[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(sparse_top(probs, 4, 1.0)[1], sparse_top(probs, 4)[1])
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="mass"):
            sparse_top(probs, 4, bad)


@pytest.mark.parametrize("mass", [0.5, 0.9, 0.99])
def test_sparse_top_total_variation_is_at_most_the_mass_it_drops(mass: float) -> None:
    """The acceptance a cut draft row can lose (the total-variation distance from the full row,
    which bounds the change in sum(min(p, q))) is at most 1 - mass."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 500, generator=gen) * 1.5, dim=-1)  # [N, V] flat rows
    ids, sparse = sparse_top(probs, 500, mass)
    dense = draft_dense_probs(ids, sparse, probs.shape[1])  # [N, V]
    tv = 0.5 * (dense - probs).abs().sum(dim=-1)  # [N]
    assert tv.max().item() <= 1 - mass + 1e-5
    kept = torch.where(dense > 0, probs, 0.0).sum(dim=-1)  # [N]
    assert (kept >= mass - 1e-6).all()
    torch.testing.assert_close(tv, 1 - kept)


def test_sample_sparse_token_maps_back_to_vocabulary_ids() -> None:
    ids = torch.tensor([40, 7, 13])
    probs = torch.tensor([0.0, 0.75, 0.25])
    draws = [
        sample_sparse_token(ids, probs, position_generator(1, pos, STREAM_DRAFT))
        for pos in range(200)
    ]
    assert set(draws) == {7, 13}
