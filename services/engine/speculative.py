"""In-process speculative generation: the reference the distributed pipeline is checked against.

``generate`` runs the whole loop in one process: a proposer drafts k tokens, the target verifies
them in one forward (together with any not-yet-fed committed tokens, so the first round is also
the prompt's prefill), the acceptance rule keeps what the target agrees with, and both sides roll
back by position. With k = 0 every round is one plain decoding step, so ``generate(...,
proposer=None)`` is target-only decoding, token for token the baseline.
Non-goals: batching several requests (the services do that), networking.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from specdec.core.errors import InvalidRequest
from specdec.core.limits import MAX_SPEC_DEPTH, check_depth
from specdec.engine.proposer import EMPTY_PROPOSAL, Proposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import SequenceState, VerifyItem, verify_batch


@dataclass
class GenerationStats:
    """What happened, round by round; also the input of a depth policy."""

    rounds: int = 0
    draft_tokens: int = 0  # tokens proposed
    accepted_tokens: int = 0  # proposed tokens the target kept
    depths: list[int] = field(default_factory=list)  # k asked for, per round
    accepted_per_position: list[int] = field(default_factory=lambda: [0] * MAX_SPEC_DEPTH)
    proposed_per_position: list[int] = field(default_factory=lambda: [0] * MAX_SPEC_DEPTH)
    prompt_tokens: int = 0
    output_tokens: int = 0
    elapsed_s: float = 0.0
    first_token_s: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens gained per round, the target's own token included."""
        return self.output_tokens / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def record(self, k: int, proposed: int, accepted: int) -> None:
        self.rounds += 1
        self.depths.append(k)
        self.draft_tokens += proposed
        self.accepted_tokens += accepted
        for i in range(proposed):
            self.proposed_per_position[i] += 1
            self.accepted_per_position[i] += int(i < accepted)


DepthFn = Callable[[GenerationStats], int]


@dataclass
class GenerationResult:
    token_ids: list[int]  # generated tokens only
    finish_reason: str  # "stop" (an eos or stop token), "length" (max_tokens or context)
    stats: GenerationStats


def fixed_depth(k: int) -> DepthFn:
    """A depth policy that always asks for ``k`` tokens."""
    check_depth(k)
    return lambda _stats: k


def check_prompt(prompt_ids: Sequence[int], vocab_size: int, max_seq_len: int) -> None:
    if not prompt_ids:
        raise InvalidRequest("prompt", "is empty; give at least one token")
    if len(prompt_ids) >= max_seq_len:
        raise InvalidRequest(
            "prompt",
            f"has {len(prompt_ids)} tokens; the context holds "
            f"{max_seq_len}, leaving no room to generate",
        )
    bad = [t for t in prompt_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequest(
            "prompt", f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})"
        )


def generate(
    target: ModelRunner,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    max_tokens: int,
    proposer: Proposer | None = None,
    depth: DepthFn | int = 4,
    stop_token_ids: Sequence[int] | None = None,
) -> GenerationResult:
    """Generate up to ``max_tokens`` tokens after ``prompt_ids``, speculating when a proposer
    is given. The output equals target-only decoding (greedy) or follows its distribution.

    Takes ownership of ``proposer``: it is closed (its slot freed) when this returns or raises.
    """
    try:
        params.validate()
        check_prompt(prompt_ids, target.vocab_size, target.max_seq_len)
        if max_tokens <= 0:
            raise InvalidRequest("max_tokens", f"must be positive, got {max_tokens}")
        depth_fn = fixed_depth(depth) if isinstance(depth, int) else depth
        stops = set(target.config.eos_token_ids if stop_token_ids is None else stop_token_ids)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        seq = SequenceState(target.cache.allocate(), list(prompt_ids), params, seed)
        try:
            return _run(target, seq, max_tokens, proposer, depth_fn, stops)
        finally:
            target.cache.free(seq.slot)
    finally:
        if proposer is not None:
            proposer.close()


def _run(
    target: ModelRunner,
    seq: SequenceState,
    max_tokens: int,
    proposer: Proposer | None,
    depth_fn: DepthFn,
    stops: set[int],
) -> GenerationResult:
    """The speculation loop proper: propose, verify, commit, until a stop or the budget."""
    stats = GenerationStats(prompt_tokens=len(seq.committed))
    generated: list[int] = []
    finish = "length"
    started = time.perf_counter()
    while len(generated) < max_tokens and len(seq.committed) < target.max_seq_len:
        # Room for k drafts + 1 target token, within the budget and the context.
        room = min(max_tokens - len(generated), target.max_seq_len - len(seq.committed)) - 1
        proposal = EMPTY_PROPOSAL
        k = 0
        if proposer is not None:
            k = depth_fn(stats)
            check_depth(k)
            k = min(k, room)
            if k > 0:
                proposal = proposer.propose(seq.committed, k, seq.params, seq.seed)
        result = verify_batch(target, [VerifyItem(seq, proposal)])[0]
        stats.record(k, len(proposal), result.num_accepted)
        for token in result.token_ids(proposal.draft_token_ids):
            generated.append(token)
            if token in stops:
                finish = "stop"
                break
            if len(generated) >= max_tokens:
                break
        if stats.rounds == 1:
            stats.first_token_s = time.perf_counter() - started
        if finish == "stop":
            break
    stats.output_tokens = len(generated)
    stats.elapsed_s = time.perf_counter() - started
    return GenerationResult(generated, finish, stats)
