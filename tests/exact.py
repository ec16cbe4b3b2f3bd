"""Exact output distributions of plain sampling, for statistical tests of speculative sampling."""

from __future__ import annotations

import torch
from scipy.stats import chisquare

from specdec.engine.batch import Chunk
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams, target_probs


def exact_marginals(
    target: ModelRunner, prompt: list[int], params: SamplingParams, n: int
) -> list[torch.Tensor]:
    """P(i-th generated token) of plain sampling for i < n, computed exactly by walking every
    continuation with nonzero probability (keep the support small: top_k)."""
    slot = target.cache.allocate()
    marginals: list[torch.Tensor] = []

    def walk(new: list[int], start: int, mass: float, i: int) -> None:
        """Feed ``new`` at ``start``: what follows is the i-th generated token."""
        logits = target.step([Chunk(slot, new, start, 1)])[0]
        probs = target_probs(logits, params)[0].double()  # [V]
        if len(marginals) == i:
            marginals.append(torch.zeros_like(probs))
        marginals[i] += mass * probs
        if i + 1 < n:
            end = start + len(new)
            for tok in torch.nonzero(probs).flatten().tolist():
                walk([tok], end, mass * float(probs[tok]), i + 1)
                target.cache.rollback_to(slot, end)

    try:
        walk(list(prompt), 0, 1.0, 0)
    finally:
        target.cache.free(slot)
    return marginals


def assert_matches(counts: dict[int, int], exact: torch.Tensor, n: int) -> None:
    """Chi-square of observed token counts against ``exact`` (support with mass > 1e-3)."""
    support = torch.nonzero(exact > 1e-3).flatten().tolist()
    observed = [counts.get(t, 0) for t in support]
    expected = (exact[support] / exact[support].sum() * sum(observed)).tolist()
    assert sum(observed) >= 0.99 * n
    assert chisquare(observed, expected).pvalue > 1e-4, (observed, expected)
