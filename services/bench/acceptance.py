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

from collections.abc import Iterable, Sequence
from typing import Any

from specdec.bench.systems import SpecCounts
from specdec.core.limits import MAX_SPEC_DEPTH


def proposed_per_position(depths: Iterable[int]) -> list[int]:
    """[i]: rounds that proposed position i (depth > i)."""
    out = [0] * MAX_SPEC_DEPTH
    for k in depths:
        for i in range(min(k, MAX_SPEC_DEPTH)):
            out[i] += 1
    return out


def per_position_rates(counts: SpecCounts) -> list[float]:
    """[i]: share of rounds proposing position i that had it accepted (up to the deepest k)."""
    proposed = proposed_per_position(counts.depths)
    return [a / p for a, p in zip(counts.accepted_per_position, proposed, strict=True) if p]


def alpha_from_rounds(rounds: Iterable[tuple[int, int]]) -> float | None:
    """Exact MLE from per-round (proposed, accepted) pairs (trace events)."""
    accepted = rejected = 0
    for proposed, num_accepted in rounds:
        accepted += num_accepted
        rejected += int(num_accepted < proposed)
    return accepted / (accepted + rejected) if accepted + rejected else None


def alpha_from_counts(counts: SpecCounts) -> float | None:
    """The MLE from per-position totals when per-round data is missing: position i was tried in
    the rounds that accepted position i − 1 and went that deep (exact when k is fixed)."""
    proposed = proposed_per_position(counts.depths)
    accepted = counts.accepted_per_position
    tried = proposed[0] + sum(min(accepted[i - 1], proposed[i]) for i in range(1, MAX_SPEC_DEPTH))
    return sum(accepted) / tried if tried else None


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
    counts: SpecCounts,
    c: float | None,
    measured_speedup: float | None,
    rounds: list[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Everything the report says about one speculating system's acceptance.

    ``measured_speedup`` is over plain target-only decoding in the engine (no network), the
    baseline of the paper's cost model: the efficiency then charges the system's overheads,
    the pipeline's network included. (Over the pipeline's own k = 0, which pays the network
    every token, an overhead per round is amortized over several tokens and can push the
    ratio above 1.)"""
    alpha = alpha_from_rounds(rounds) if rounds else alpha_from_counts(counts)
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
        "alpha_source": "trace rounds" if rounds else "per-position stats",
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
