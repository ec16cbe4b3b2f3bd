"""Draft-ahead: rank the outcomes of a verification, and fork a branch to draft each one on.

While the verifier checks drafts D[0..K-1] after a committed sequence S, the draft works on what
comes next. An outcome of the check is (a, t): the first a drafts accepted, then the verifier's
own token t, which replaces D[a] when a < K (a rejection) and is the bonus token when a = K. The
draft ranks outcomes by an estimate of their probability,

    P(a, t) = alpha^a · P(the target's token at a is t | the first a accepted)

with alpha the sequence's measured acceptance rate per draft (each step shows how many drafts
the verifier kept) and, at a draft position, P(t) = (1 - alpha) · q_a(t) / (1 - q_a(D_a)) for a
replacement t ≠ D_a; after the last draft, alpha for the draft's own likeliest token and the
same share of (1 - alpha) for the others. The draft's distribution q says which replacement
is likely, the measured alpha how likely a rejection is: a draft's own probabilities are often
flat where it agrees with the target anyway. It then drafts the next proposal for the likeliest
outcomes: a branch is a KV-cache slot that holds S + D[:a]
(copied from the sequence's slot, only the part the branch slot lacks) followed by t, drafted
on like any sequence. When the verdict arrives, the proposal for the outcome that happened is
ready (drafting during verification: PEARL, arXiv 2408.11850; a speculation cache keyed by
outcome: Speculative Speculative Decoding, arXiv 2603.03251).

Exactness: a branch's proposal is what the draft would propose for that state from scratch
(same context, same position-keyed randomness), so the draft probabilities it carries are the
ones its tokens were drawn from, and it is only ever used for exactly that state.
Non-goals: scheduling (``draft.core``), tree attention (branches are plain slots).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from specdec.engine.runner import ModelRunner
from specdec.engine.sequence import SequenceState


@dataclass(frozen=True)
class Outcome:
    """One way a verification can end."""

    num_accepted: int  # leading drafts kept
    next_token_id: int  # the verifier's own token after them
    score: float  # the draft's probability of this outcome


def likely_outcomes(
    draft_token_ids: Sequence[int],
    draft_token_probs: Sequence[float],
    top_ids: Sequence[Sequence[int]],
    top_probs: Sequence[Sequence[float]],
    width: int,
    alpha: float,
) -> list[Outcome]:
    """The ``width`` likeliest outcomes of verifying ``draft_token_ids``, likeliest first.

    draft_token_probs [K]: the draft's probability of each draft token. top_ids, top_probs
    [K+1][A]: the draft's likeliest tokens and their probabilities at each draft position and
    after the last draft (fewer rows: the outcomes past them are not considered). ``alpha``:
    the measured chance that the verifier accepts a draft.
    """
    candidates: list[Outcome] = []
    for a, (ids, probs) in enumerate(zip(top_ids, top_probs, strict=False)):
        reach = alpha**a  # the first a drafts accepted
        if a < len(draft_token_ids):  # a rejection there, and the replacement
            kept = draft_token_ids[a]
            rest = max(1.0 - draft_token_probs[a], 1e-9)
            for token, prob in zip(ids, probs, strict=True):
                if token != kept and prob > 0.0:
                    candidates.append(Outcome(a, token, reach * (1 - alpha) * prob / rest))
            continue
        guess, rest = ids[0], max(1.0 - probs[0], 1e-9)  # past the drafts: the bonus token
        candidates.append(Outcome(a, guess, reach * alpha))
        for token, prob in zip(ids[1:], probs[1:], strict=True):
            if prob > 0.0:
                candidates.append(Outcome(a, token, reach * (1 - alpha) * prob / rest))
        break
    return heapq.nlargest(width, candidates, key=lambda o: o.score)


class Acceptance:
    """A sequence's acceptance rate per draft: a decayed Beta estimate (recent rounds count
    more), ``prior`` until evidence comes in."""

    def __init__(self, prior: float = 0.6, weight: float = 4.0, decay: float = 0.9) -> None:
        self.successes, self.failures = prior * weight, (1 - prior) * weight
        self.decay = decay

    @property
    def rate(self) -> float:
        return self.successes / (self.successes + self.failures)

    def observe(self, proposed: Sequence[int], tail: Sequence[int]) -> None:
        """The verifier, given ``proposed``, committed ``tail`` (kept drafts, then its own)."""
        if not proposed or not tail:
            return
        accepted = 0
        while accepted < min(len(proposed), len(tail) - 1) and tail[accepted] == proposed[accepted]:
            accepted += 1
        self.successes = self.successes * self.decay + accepted
        self.failures = self.failures * self.decay + (accepted < len(proposed))


def fork(
    runner: ModelRunner, src: SequenceState, dst: SequenceState, prefix_len: int, state: list[int]
) -> None:
    """Make ``dst`` stand for ``state``, whose first ``prefix_len`` tokens ``src``'s slot holds:
    only the keys and values ``dst``'s slot lacks are copied."""
    prefix = src.cached[:prefix_len]
    if len(prefix) != prefix_len or prefix != state[:prefix_len]:
        raise ValueError(f"the source slot does not hold the state's first {prefix_len} tokens")
    keep = 0
    limit = min(len(dst.cached), prefix_len)
    while keep < limit and dst.cached[keep] == prefix[keep]:
        keep += 1
    runner.cache.rollback_to(dst.slot, keep)
    runner.cache.copy(src.slot, dst.slot, keep, prefix_len)
    dst.cached = prefix
    dst.committed = list(state)
    dst.params, dst.seed = src.params, src.seed
