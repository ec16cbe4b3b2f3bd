"""In-process speculative generation: the reference the distributed pipeline is checked against.

``generate`` runs the one speculation loop (``specdec.core.speculation``) over the engine's
ports in this process: a proposer drafts k tokens, the target verifies them in one forward, the
acceptance rule keeps what the target agrees with, and both sides roll back by position. Round 0
prefills the prompt and decides the first token. Without a proposer every round is one plain
decoding step, so ``generate(..., proposer=None)`` is target-only decoding, token for token the
baseline. A feature draft's proposer (``proposer_feature.py``) takes the target's hidden states
from each verdict.
Non-goals: batching several requests (the services do that), networking.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from specdec.core.depth import DepthPolicy, FixedDepth
from specdec.core.errors import InvalidRequest
from specdec.core.limits import check_depth, check_prompt
from specdec.core.rounds import Round, Tally
from specdec.core.speculation import Budget, Drafter, NoDrafter, speculate
from specdec.engine.draft_engine import Ahead
from specdec.engine.ports import AheadDrafter, EngineDrafter, EngineVerifier, run_now
from specdec.engine.proposer import Proposer
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.proposer_feature import FeatureDraftProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens only
    finish_reason: str  # "stop" (an eos or stop token), "length" (max_tokens or context)
    stats: Tally
    elapsed_s: float  # the whole call
    first_token_s: float  # to the end of the prefill round

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.elapsed_s if self.elapsed_s > 0 else 0.0


def generate(
    target: ModelRunner,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    max_tokens: int,
    proposer: Proposer | None = None,
    depth: DepthPolicy | int = 4,
    stop_token_ids: Sequence[int] | None = None,
    ahead_width: int = 0,
) -> GenerationResult:
    """Generate up to ``max_tokens`` tokens after ``prompt_ids``, speculating when a proposer
    is given. The output equals target-only decoding (greedy) or follows its distribution.

    ``ahead_width`` > 0 (a draft model only) drafts that many outcomes of each verification
    ahead, as the draft service does, and takes the next proposal from them when one matches.
    Takes ownership of ``proposer``: it is closed (its slot freed) when this returns or raises.
    """
    try:
        params.validate()
        check_prompt(prompt_ids, target.vocab_size, target.max_seq_len)
        if max_tokens <= 0:
            raise InvalidRequest("max_tokens", f"must be positive, got {max_tokens}")
        if isinstance(depth, int):
            check_depth(depth)
            depth = FixedDepth(depth)
        stops = target.config.eos_token_ids if stop_token_ids is None else stop_token_ids
        budget = Budget(max_tokens, target.max_seq_len, frozenset(stops))
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        features = isinstance(proposer, FeatureDraftProposer)
        verifier = EngineVerifier(target, params, seed, features=features)
        drafter = _drafter(proposer, params, seed, ahead_width, depth.next_depth())
        try:
            return run_now(_run(prompt_ids, budget, drafter, verifier, depth))
        finally:
            verifier.close()
            if isinstance(drafter, AheadDrafter):
                drafter.close()
    finally:
        if proposer is not None:
            proposer.close()


def _drafter(
    proposer: Proposer | None, params: SamplingParams, seed: int, ahead_width: int, depth: int
) -> Drafter:
    if proposer is None:
        return NoDrafter()
    if not ahead_width:
        return EngineDrafter(proposer, params, seed)
    if not isinstance(proposer, DraftModelProposer) or isinstance(proposer, FeatureDraftProposer):
        raise InvalidRequest("ahead_width", "draft-ahead needs a draft model of tokens only")
    ahead = Ahead(ahead_width, max(depth, 1))
    ahead.check()
    return AheadDrafter(
        proposer.runner,
        params,
        seed,
        ahead,
        proposer.vocab_limit,
        proposer.top_m,
        proposer.top_mass,
    )


async def _run(
    prompt_ids: Sequence[int],
    budget: Budget,
    drafter: Drafter,
    verifier: EngineVerifier,
    policy: DepthPolicy,
) -> GenerationResult:
    started = time.perf_counter()
    stats = Tally()
    tokens: list[int] = []
    first_token_s = 0.0
    last: Round | None = None
    async for last in speculate(prompt_ids, budget, drafter, verifier, policy):
        stats.add(last)
        tokens += last.token_ids
        if last.index == 0:
            first_token_s = time.perf_counter() - started
    assert last is not None and last.finish is not None
    return GenerationResult(
        tokens, last.finish, stats, time.perf_counter() - started, first_token_s
    )
