"""Drafting with a small causal LM that shares the target's tokenizer (one sequence).

The proposer owns one KV-cache slot of the draft runner. Each round it rolls back to the longest
prefix it shares with the committed sequence, feeds the rest (usually the newest token, or the
last draft and the bonus token after a full acceptance) and decodes k tokens one at a time; see
``drafting.py``, which the draft service runs for many sequences at once. When sampling
it draws from its own warped distribution cut to its most likely tokens (``sparse_top``: up to
``top_m`` of them, stopping once they hold ``top_mass``) and ships exactly that sparse
distribution. The cut costs acceptance: a flat draft row cut to its top 32 tokens lost a tenth
of the demo pair's acceptance at temperature 0.8, which is why the defaults are wide.
Non-goals: tree drafting.
"""

from __future__ import annotations

from collections.abc import Sequence

from specdec.engine.drafting import DraftCursor, draft_batch
from specdec.engine.proposer import EMPTY_PROPOSAL, Proposal
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import SequenceState

DEFAULT_TOP_M = 256  # at most this many draft probabilities shipped per position when sampling
DEFAULT_TOP_MASS = 0.99  # ... and no more than it takes to hold this mass


class DraftModelProposer:
    """``Proposer`` backed by a draft ``ModelRunner``; one slot for the life of a sequence."""

    def __init__(
        self,
        runner: ModelRunner,
        vocab_limit: int | None = None,
        top_m: int = DEFAULT_TOP_M,
        top_mass: float = DEFAULT_TOP_MASS,
    ) -> None:
        self.runner = runner
        self.state = SequenceState(runner.cache.allocate(), [], SamplingParams(), 0)
        # Ids the target can score; a draft with a padded, larger embedding never proposes others.
        self.vocab_limit = vocab_limit or runner.vocab_size
        self.top_m, self.top_mass = top_m, top_mass
        self._closed = False

    @property
    def slot(self) -> int:
        return self.state.slot

    @property
    def cached(self) -> list[int]:
        """The tokens whose keys and values the slot holds."""
        return self.state.cached

    def propose(
        self, committed: Sequence[int], k: int, params: SamplingParams, seed: int
    ) -> Proposal:
        if k <= 0:
            return EMPTY_PROPOSAL
        self.state.committed = list(committed)
        self.state.params, self.state.seed = params, seed
        cursor = DraftCursor(self.state, k)
        return draft_batch(self.runner, [cursor], self.vocab_limit, self.top_m, self.top_mass)[0]

    def close(self) -> None:
        if not self._closed:
            self.runner.cache.free(self.state.slot)
            self._closed = True
