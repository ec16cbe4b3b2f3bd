"""Acceptance measured from the systems' stats, and the speedup Leviathan et al. predict from it.

Vocabulary: a round proposes k draft tokens; the target accepts the longest agreeing prefix and
adds one token of its own. ``alpha`` is the per-token acceptance rate of the i.i.d. model of
Leviathan, Kalman and Matias, "Fast Inference from Transformers via Speculative Decoding"
(arXiv 2211.17192), estimated by maximum likelihood: each round is a run of Bernoulli trials
that stops at the first rejection, so alpha = accepted / (accepted + rounds with a rejection).
With the draft/target cost ratio c, a round of depth k yields (1 − alpha^(k+1)) / (1 − alpha)
tokens at the cost of k·c + 1 target steps; over rounds of varying depth the predicted speedup is
Σ tokens ÷ Σ cost, which for a fixed k is the paper's (1 − alpha^(k+1)) / ((1 − alpha)(k·c + 1)).
Efficiency = measured speedup ÷ predicted: what the system's overheads cost.
Non-goals: sampling acceptance (greedy only), tree drafts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from specdec.core.rounds import Tally


def per_position_rates(counts: Tally) -> list[float]:
    """[i]: share of the rounds that proposed position i which had it accepted."""
    pairs = zip(counts.accepted_per_position, counts.proposed_per_position, strict=True)
    return [a / p for a, p in pairs if p]


def tokens_per_round(alpha: float, k: int) -> float:
    """Expected tokens a round of depth k yields (accepted drafts plus the target's own)."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, c: float, depths: Sequence[int]) -> float | None:
    """Leviathan et al.'s walltime improvement over target-only decoding for these rounds."""
    if not depths:
        return None
    tokens = sum(tokens_per_round(alpha, k) for k in depths)
    cost = sum(k * c + 1.0 for k in depths)
    return tokens / cost


def acceptance_summary(
    counts: Tally, c: float | None, measured_speedup: float | None
) -> dict[str, Any]:
    """Everything the report says about one speculating system's acceptance.

    ``measured_speedup`` is over plain target-only decoding in the engine (no network), the
    baseline of the paper's cost model: the efficiency then charges the system's overheads,
    the pipeline's network included. (Over the pipeline's own k = 0, which pays the network
    every token, an overhead per round is amortized over several tokens and can push the
    ratio above 1.)"""
    alpha = counts.alpha
    drafted = sum(1 for k in counts.depths if k > 0)
    predicted = predicted_speedup(alpha, c, counts.depths) if alpha is not None and c else None
    return {
        "rounds": counts.rounds,
        "draft_tokens": counts.draft_tokens,
        "accepted_tokens": counts.accepted_tokens,
        "acceptance_rate": counts.accepted_tokens / counts.draft_tokens
        if counts.draft_tokens
        else 0.0,
        "alpha": alpha,
        "mean_acceptance_length": 1.0 + counts.accepted_tokens / drafted if drafted else 1.0,
        "tokens_per_round": counts.output_tokens / counts.rounds if counts.rounds else 0.0,
        "mean_depth": sum(counts.depths) / len(counts.depths) if counts.depths else 0.0,
        "per_position": per_position_rates(counts),
        "predicted_speedup": predicted,
        "measured_speedup": measured_speedup,
        "efficiency": measured_speedup / predicted
        if predicted and measured_speedup is not None
        else None,
    }
