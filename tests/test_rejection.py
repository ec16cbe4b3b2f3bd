"""Unit tests of ``specdec.engine.rejection``: speculative acceptance is exact, three ways.

a. Closed form on tiny vocabularies (fp64): accept·draft + rejection mass·residual = target.
b. Seeded Monte-Carlo of the real ``verify_sampling``: position 0, position 1 given acceptance,
   and the bonus token each follow the target; the acceptance rate is Σ min(target, draft).
c. Greedy verification edge cases, and sampling verification reducing to greedy on one-hot
   targets.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from specdec.core.errors import InvalidRequest
from specdec.engine.rejection import (
    VerifyResult,
    draft_dense_probs,
    residual_probs,
    verify_greedy,
    verify_sampling,
)
from specdec.engine.sampling import STREAM_TARGET, position_generator, sparse_top

pytestmark = pytest.mark.unit

F64 = torch.float64


def _random_row(gen: torch.Generator, vocab: int, zero_frac: float) -> torch.Tensor:
    """A random distribution [V] fp64 with about ``zero_frac`` of its entries exactly 0."""
    row = torch.rand(vocab, generator=gen, dtype=F64) ** 3
    row[torch.rand(vocab, generator=gen, dtype=F64) < zero_frac] = 0.0
    if row.sum() == 0:
        row[torch.randint(vocab, (1,), generator=gen)] = 1.0
    return row / row.sum()


# --- a. closed form ---------------------------------------------------------------------------


def _analytic_residual(target_row: torch.Tensor, draft_row: torch.Tensor) -> torch.Tensor:
    residual = torch.clamp(target_row - draft_row, min=0.0)
    return residual / residual.sum() if residual.sum() > 0 else target_row


def _output_distribution(target_row: torch.Tensor, draft_row: torch.Tensor, residual_fn):
    """P(out = x) = q(x)·min(1, p(x)/q(x)) + (1 − Σ_y q(y)·min(1, p(y)/q(y)))·residual(x)."""
    ratio = torch.where(draft_row > 0, target_row / draft_row, torch.ones_like(draft_row))
    accept = draft_row * torch.clamp(ratio, max=1.0)  # [V]; 0 where the draft never proposes
    return accept + (1.0 - accept.sum()) * residual_fn(target_row, draft_row)


def test_closed_form_output_equals_target_exactly() -> None:
    gen = torch.Generator().manual_seed(1234)
    for trial in range(200):
        vocab = 2 + trial % 9
        target_row = _random_row(gen, vocab, zero_frac=0.3)  # zeros where the draft may be > 0
        draft_row = _random_row(gen, vocab, zero_frac=0.3)  # zeros where the target may be > 0
        for residual_fn in (_analytic_residual, residual_probs):
            out = _output_distribution(target_row, draft_row, residual_fn)
            torch.testing.assert_close(out, target_row, rtol=0.0, atol=1e-12)


def test_residual_probs_matches_the_formula() -> None:
    gen = torch.Generator().manual_seed(99)
    for _ in range(200):
        target_row = _random_row(gen, 7, zero_frac=0.3)
        draft_row = _random_row(gen, 7, zero_frac=0.3)
        residual = residual_probs(target_row, draft_row)
        assert residual.dtype == F64
        torch.testing.assert_close(
            residual, _analytic_residual(target_row, draft_row), rtol=0.0, atol=1e-15
        )
        assert residual.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (residual[target_row <= draft_row] == 0).all()


def test_residual_with_no_mass_falls_back_to_target() -> None:
    target_row = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    torch.testing.assert_close(residual_probs(target_row, target_row.clone()), target_row)
    # Draft above the target everywhere it matters (rounding): still the target.
    torch.testing.assert_close(residual_probs(target_row, target_row + 1e-9), target_row)


# --- b. Monte-Carlo of the real verify_sampling -----------------------------------------------

NUM_RUNS = 100_000
MC_VOCAB = 8
MC_SPARSE = 5  # draft support < vocabulary, so the sparse path is exercised

# Target rows for positions 0, 1 and the bonus position. Row 0 is 0 on token 3, which the draft
# proposes, and positive on token 6, which the draft cannot propose.
MC_TARGET = torch.tensor(
    [
        [0.22, 0.18, 0.15, 0.00, 0.20, 0.05, 0.12, 0.08],
        [0.05, 0.30, 0.10, 0.20, 0.05, 0.15, 0.10, 0.05],
        [0.10, 0.10, 0.25, 0.05, 0.05, 0.20, 0.15, 0.10],
    ]
)
# Full draft rows; the wire carries their top-MC_SPARSE, renormalised.
MC_DRAFT_FULL = torch.tensor(
    [
        [0.25, 0.20, 0.10, 0.15, 0.12, 0.08, 0.05, 0.05],
        [0.10, 0.25, 0.15, 0.05, 0.05, 0.25, 0.10, 0.05],
    ]
)


def _assert_follows(tokens: torch.Tensor, target_row: torch.Tensor, max_tv: float) -> None:
    """Chi-square (p-value > 1e-4) and total-variation check of samples against a target row."""
    counts = torch.bincount(tokens, minlength=MC_VOCAB).double()
    support = target_row > 0
    assert counts[~support].sum() == 0, "sampled a token the target gives probability 0"
    n = counts.sum().item()
    expected = target_row.double()[support] / target_row.double().sum() * n
    result = chisquare(counts[support].numpy(), expected.numpy())
    assert result.pvalue > 1e-4, (counts.tolist(), expected.tolist())
    tv = 0.5 * (counts / n - target_row.double()).abs().sum().item()
    assert tv < max_tv


@pytest.fixture(scope="module")
def monte_carlo_runs() -> dict[str, torch.Tensor]:
    """NUM_RUNS seeded calls of verify_sampling with K=2, draft tokens drawn from the draft."""
    sparse_ids, sparse_probs = sparse_top(MC_DRAFT_FULL, MC_SPARSE)  # [K, M] each
    gen = torch.Generator().manual_seed(20240229)
    k = sparse_ids.shape[0]
    picks = torch.multinomial(sparse_probs, NUM_RUNS, replacement=True, generator=gen)  # [K, N]
    draft_tokens = sparse_ids.gather(1, picks).T.tolist()  # [N][K]
    generators = [gen] * (k + 1)  # one stream for every draw: independent across calls
    num_accepted, next_ids = [], []
    for draft_token_ids in draft_tokens:
        result = verify_sampling(draft_token_ids, sparse_ids, sparse_probs, MC_TARGET, generators)
        num_accepted.append(result.num_accepted)
        next_ids.append(result.next_token_id)
    return {
        "draft": torch.tensor(draft_tokens),  # [N, K]
        "accepted": torch.tensor(num_accepted),  # [N]
        "next": torch.tensor(next_ids),  # [N]
        "draft_dense": draft_dense_probs(sparse_ids, sparse_probs, MC_VOCAB).double(),  # [K, V]
    }


@pytest.mark.slow
def test_position_0_follows_target_and_accepts_at_sum_min(monte_carlo_runs) -> None:
    runs = monte_carlo_runs
    accepted0 = runs["accepted"] >= 1
    emitted0 = torch.where(accepted0, runs["draft"][:, 0], runs["next"])
    _assert_follows(emitted0, MC_TARGET[0], max_tv=0.01)
    rate = torch.minimum(MC_TARGET[0].double(), runs["draft_dense"][0]).sum().item()
    sigma = math.sqrt(rate * (1 - rate) / NUM_RUNS)
    assert abs(accepted0.double().mean().item() - rate) < 5 * sigma
    # Token 3 has target probability 0: never accepted, never recovered.
    assert not (emitted0 == 3).any()


@pytest.mark.slow
def test_position_1_given_acceptance_follows_target(monte_carlo_runs) -> None:
    runs = monte_carlo_runs
    given = runs["accepted"] >= 1
    accepted1 = runs["accepted"][given] >= 2
    emitted1 = torch.where(accepted1, runs["draft"][given, 1], runs["next"][given])
    _assert_follows(emitted1, MC_TARGET[1], max_tv=0.015)
    rate = torch.minimum(MC_TARGET[1].double(), runs["draft_dense"][1]).sum().item()
    sigma = math.sqrt(rate * (1 - rate) / given.sum().item())
    assert abs(accepted1.double().mean().item() - rate) < 5 * sigma


@pytest.mark.slow
def test_bonus_token_follows_target(monte_carlo_runs) -> None:
    runs = monte_carlo_runs
    all_accepted = runs["accepted"] == 2
    assert all_accepted.sum() > 20_000
    _assert_follows(runs["next"][all_accepted], MC_TARGET[2], max_tv=0.015)


# --- verify_sampling: determinism and special cases --------------------------------------------


def _sparse_case() -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    sparse_ids = torch.tensor([[0, 2, 5], [1, 3, 4]])
    sparse_probs = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    target = torch.softmax(torch.randn(3, 6, generator=torch.Generator().manual_seed(5)), -1)
    return [2, 1], sparse_ids, sparse_probs, target


def _position_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    return [position_generator(seed, start + i, STREAM_TARGET) for i in range(count)]


def test_verify_sampling_is_reproducible_and_leaves_global_rng_alone() -> None:
    draft_ids, sparse_ids, sparse_probs, target = _sparse_case()
    global_state = torch.get_rng_state()
    results = [
        verify_sampling(draft_ids, sparse_ids, sparse_probs, target, _position_generators(s, 10, 3))
        for s in range(50)
    ]
    again = [
        verify_sampling(draft_ids, sparse_ids, sparse_probs, target, _position_generators(s, 10, 3))
        for s in range(50)
    ]
    assert results == again
    assert len(set(results)) > 1
    assert torch.equal(torch.get_rng_state(), global_state)


def test_draft_token_with_target_at_least_draft_is_always_accepted() -> None:
    sparse_ids = torch.tensor([[1, 2]])
    sparse_probs = torch.tensor([[0.5, 0.5]])
    target = torch.tensor([[0.0, 0.6, 0.4, 0.0], [0.1, 0.2, 0.3, 0.4]])
    for seed in range(100):
        result = verify_sampling(
            [1], sparse_ids, sparse_probs, target, _position_generators(seed, 0, 2)
        )
        assert result.num_accepted == 1 and result.is_bonus
        assert result.bonus_token_id == result.next_token_id
        assert result.recovered_token_id is None


def test_draft_token_with_zero_target_is_always_rejected() -> None:
    sparse_ids = torch.tensor([[1, 2]])
    sparse_probs = torch.tensor([[0.5, 0.5]])
    target = torch.tensor([[0.3, 0.0, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    seen = set()
    for seed in range(200):
        result = verify_sampling(
            [1], sparse_ids, sparse_probs, target, _position_generators(seed, 0, 2)
        )
        assert result.num_accepted == 0 and not result.is_bonus
        assert result.recovered_token_id == result.next_token_id
        assert result.bonus_token_id is None
        seen.add(result.next_token_id)
    assert seen == {0, 3}  # residual: target minus draft, clamped; token 2 has 0.3 - 0.5 < 0


def test_zero_draft_tokens_samples_the_bonus_from_the_target() -> None:
    target = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    empty = torch.zeros(0, 3, dtype=torch.int64)
    result = verify_sampling([], empty, empty.float(), target, _position_generators(0, 0, 1))
    assert result == VerifyResult(num_accepted=0, next_token_id=2, is_bonus=True)
    assert result.token_ids([]) == [2]
    no_draft = torch.zeros(0, 0)
    result = verify_sampling([], no_draft.long(), no_draft, target, _position_generators(0, 0, 1))
    assert result.next_token_id == 2


def test_sampling_on_one_hot_targets_equals_greedy() -> None:
    gen = torch.Generator().manual_seed(3)
    for seed in range(40):
        target_logits = torch.randn(4, 10, generator=gen)
        one_hot = torch.zeros(4, 10).scatter_(1, target_logits.argmax(-1, keepdim=True), 1.0)
        draft_full = torch.softmax(2 * torch.randn(3, 10, generator=gen), -1)
        sparse_ids, sparse_probs = sparse_top(draft_full, 4)
        draft_ids = [int(sparse_ids[i, torch.randint(2, (1,), generator=gen)]) for i in range(3)]
        if seed % 3 == 0:  # make some runs accept everything
            draft_ids = target_logits.argmax(-1)[:3].tolist()
            sparse_ids[:, 0] = torch.tensor(draft_ids)
            sparse_ids[:, 1:] = (sparse_ids[:, :1] + torch.arange(1, 4)) % 10
        generators = _position_generators(seed, 0, 4)
        sampled = verify_sampling(draft_ids, sparse_ids, sparse_probs, one_hot, generators)
        assert sampled == verify_greedy(draft_ids, target_logits)


# --- c. greedy ---------------------------------------------------------------------------------


def _logits_with_argmax(argmaxes: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(argmaxes), vocab)
    logits[torch.arange(len(argmaxes)), torch.tensor(argmaxes)] = 5.0
    return logits


def test_greedy_all_accepted_gives_bonus() -> None:
    result = verify_greedy([3, 1, 4], _logits_with_argmax([3, 1, 4, 2]))
    assert result == VerifyResult(num_accepted=3, next_token_id=2, is_bonus=True)
    assert result.token_ids([3, 1, 4]) == [3, 1, 4, 2]
    assert result.bonus_token_id == 2 and result.recovered_token_id is None


def test_greedy_first_rejected() -> None:
    result = verify_greedy([0, 1, 4], _logits_with_argmax([3, 1, 4, 2]))
    assert result == VerifyResult(num_accepted=0, next_token_id=3, is_bonus=False)
    assert result.token_ids([0, 1, 4]) == [3]
    assert result.recovered_token_id == 3 and result.bonus_token_id is None


def test_greedy_rejected_in_the_middle() -> None:
    result = verify_greedy([3, 1, 5], _logits_with_argmax([3, 1, 4, 2]))
    assert result == VerifyResult(num_accepted=2, next_token_id=4, is_bonus=False)
    assert result.token_ids((3, 1, 5)) == [3, 1, 4]


def test_greedy_with_no_draft_tokens_is_plain_decoding() -> None:
    result = verify_greedy([], _logits_with_argmax([5]))
    assert result == VerifyResult(num_accepted=0, next_token_id=5, is_bonus=True)


def test_greedy_ties_go_to_lowest_id() -> None:
    logits = torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    assert verify_greedy([2], logits) == VerifyResult(0, 1, False)
    assert verify_greedy([1], logits) == VerifyResult(1, 0, True)


def test_greedy_input_errors() -> None:
    with pytest.raises(ValueError, match="target_logits"):
        verify_greedy([1, 2], torch.zeros(2, 5))
    with pytest.raises(InvalidRequest) as info:
        verify_greedy([1, 7], torch.zeros(3, 5))
    assert info.value.field == "draft_token_ids"


# --- verify_sampling input validation -----------------------------------------------------------


def _call(draft_ids=None, sparse_ids=None, sparse_probs=None, target=None, generators=None):
    base_draft, base_ids, base_probs, base_target = _sparse_case()
    draft_ids = base_draft if draft_ids is None else draft_ids
    target = base_target if target is None else target
    generators = (
        _position_generators(0, 0, len(draft_ids) + 1) if generators is None else generators
    )
    return verify_sampling(
        draft_ids,
        base_ids if sparse_ids is None else sparse_ids,
        base_probs if sparse_probs is None else sparse_probs,
        target,
        generators,
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"draft_ids": [2, 6]}, "draft_token_ids"),
        ({"draft_ids": [-1, 1]}, "draft_token_ids"),
        ({"draft_ids": [1, 1]}, "draft_probs"),  # token 1 is not among row 0's ids
        ({"sparse_ids": torch.tensor([[0, 2, 5]])}, "draft_probs"),  # one row for K=2
        ({"sparse_ids": torch.tensor([[0, 2, 6], [1, 3, 4]])}, "draft_probs"),  # id >= V
        ({"sparse_ids": torch.tensor([[0, 2, -1], [1, 3, 4]])}, "draft_probs"),
        ({"sparse_ids": torch.tensor([[0, 2, 2], [1, 3, 4]])}, "draft_probs"),  # repeated id
        ({"sparse_ids": torch.tensor([[0, 2, 5], [1, 3, 4]], dtype=torch.int32)}, "draft_probs"),
        ({"sparse_probs": torch.tensor([[0.5, 0.5], [0.6, 0.4]])}, "draft_probs"),  # shape
        ({"sparse_probs": torch.tensor([[0.5, 0.3, 0.1], [0.6, 0.3, 0.1]])}, "draft_probs"),
        ({"sparse_probs": torch.tensor([[0.8, 0.3, -0.1], [0.6, 0.3, 0.1]])}, "draft_probs"),
        ({"sparse_probs": torch.tensor([[math.nan, 0.3, 0.2], [0.6, 0.3, 0.1]])}, "draft_probs"),
        # The draft token 2 is among row 0's ids, but with draft probability 0.
        ({"sparse_probs": torch.tensor([[0.5, 0.0, 0.5], [0.6, 0.3, 0.1]])}, "draft_probs"),
    ],
)
def test_verify_sampling_rejects_bad_draft_input(kwargs: dict, field: str) -> None:
    _call()  # the base case is valid
    with pytest.raises(InvalidRequest) as info:
        _call(**kwargs)
    assert info.value.field == field


def test_verify_sampling_rejects_inconsistent_target_side() -> None:
    with pytest.raises(ValueError, match="target_probs"):
        _call(target=torch.full((2, 6), 1 / 6))
    with pytest.raises(ValueError, match="generators"):
        _call(generators=_position_generators(0, 0, 2))
