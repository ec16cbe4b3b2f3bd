"""Exact output distributions of plain sampling, for statistical tests of speculative sampling."""

from __future__ import annotations

import torch
from scipy.stats import chisquare

from specdec.engine.batch import Chunk
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams, target_probs


def exact_two_token_marginals(
    target: ModelRunner, prompt: list[int], params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(first token) and P(second token) of plain sampling, computed exactly."""
    slot = target.cache.allocate()
    try:
        logits = target.step([Chunk(slot, prompt, 0, 1)])[0]
        first = target_probs(logits, params)[0].double()  # [V]
        second = torch.zeros_like(first)
        for tok in torch.nonzero(first).flatten().tolist():
            nxt = target.step([Chunk(slot, [tok], len(prompt), 1)])[0]
            target.cache.rollback_to(slot, len(prompt))
            second += first[tok] * target_probs(nxt, params)[0].double()
    finally:
        target.cache.free(slot)
    return first, second


def assert_matches(counts: dict[int, int], exact: torch.Tensor, n: int) -> None:
    """Chi-square of observed token counts against ``exact`` (support with mass > 1e-3)."""
    support = torch.nonzero(exact > 1e-3).flatten().tolist()
    observed = [counts.get(t, 0) for t in support]
    expected = (exact[support] / exact[support].sum() * sum(observed)).tolist()
    assert sum(observed) >= 0.99 * n
    assert chisquare(observed, expected).pvalue > 1e-4, (observed, expected)
