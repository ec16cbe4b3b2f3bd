"""The speculation loop, once for every layout: ask for k drafts, verify them, commit, repeat.

Two small ports do the work. A ``Drafter`` proposes tokens for the committed sequence; a
``Verifier`` checks them in one forward and returns how many it kept plus one token of its own.
In process they wrap the engine (``specdec.engine.local_ports``); in the router they wrap the
gRPC streams, with fallback and failover (``specdec.router.ports``). A ``DepthPolicy`` picks k
every round. ``speculate`` yields one ``Round`` per verification, which the caller hands to its
observers (metrics, traces, the load guard, the session store, statistics).

Round 0 is the prefill: the verifier decides the first token from the context alone, so it can
be streamed before any drafting; the drafter prefills its own copy of the context meanwhile.

Order within a round, chosen for the network layout: when a verdict arrives the loop commits it,
lets the policy observe it, asks for the next proposal (ready at once when it was drafted ahead)
and sends it to the verifier; only then does it yield the finished round. Whatever the caller
does with a round (detokenize, stream it, count it) runs while the verifier computes the next
one: one network round trip is all the critical path holds besides drafting.

The verifier is authoritative: the committed sequence only grows by what it returns.
Non-goals: the transport, failure handling (the ports do both), torch.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from specdec.core.depth import DepthPolicy
from specdec.core.rounds import NO_PROPOSAL, Proposal, Round, Verdict


class Drafter(Protocol):
    """Proposes draft tokens for one sequence."""

    @property
    def available(self) -> bool:
        """False once drafting has failed for good: the loop then decodes plainly (k = 0)."""
        ...

    async def start(self, context: Sequence[int]) -> None:
        """Begin the sequence (a draft replica prefills it while the verifier does)."""
        ...

    async def propose(self, committed: Sequence[int], k: int) -> Proposal:
        """Up to ``k`` tokens continuing ``committed``, which may have been cut back and
        extended since the last call (rejected drafts): the drafter rolls back to match."""
        ...

    async def verifying(self, committed: Sequence[int], proposal: Proposal) -> None:
        """``proposal`` is being verified now. A drafter that drafts ahead starts on the
        likeliest outcomes of that verification; others do nothing."""
        ...

    def observe(self, verdict: Verdict) -> None:
        """A verdict arrived (the prefill's too), before the next ``propose``. A feature
        draft's drafter takes the target's hidden states from it; others do nothing."""
        ...


class Verifier(Protocol):
    """Checks proposals for one sequence. Each method returns once its request is on its way;
    awaiting what it returned gives the verdict."""

    async def open(self, context: Sequence[int]) -> Awaitable[Verdict]:
        """Prefill ``context``; the verdict's token is the first one generated."""
        ...

    async def verify(self, committed: Sequence[int], proposal: Proposal) -> Awaitable[Verdict]:
        """Verify ``proposal`` after ``committed``."""
        ...


class NoDrafter:
    """Target-only decoding: the loop asks for nothing (k = 0)."""

    available = False

    async def start(self, context: Sequence[int]) -> None:
        return None

    async def propose(self, committed: Sequence[int], k: int) -> Proposal:
        raise AssertionError("no drafter: k is always 0")

    async def verifying(self, committed: Sequence[int], proposal: Proposal) -> None:
        return None

    def observe(self, verdict: Verdict) -> None:
        return None

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Budget:
    """When generation ends: a stop token, ``max_tokens`` generated, or the context full."""

    max_tokens: int
    max_context: int
    stop_token_ids: frozenset[int] = frozenset()

    def room(self, committed: int, generated: int) -> int:
        """Tokens the next round may still commit."""
        return min(self.max_tokens - generated, self.max_context - committed)


async def speculate(
    context: Sequence[int],
    budget: Budget,
    drafter: Drafter,
    verifier: Verifier,
    policy: DepthPolicy,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> AsyncIterator[Round]:
    """Generate after ``context`` until a stop token or the budget runs out; yield each round.

    The ports stay open: the caller closes them (also when it stops early, e.g. at a stop
    string; the step already sent for the next round is then simply abandoned).
    """
    committed = list(context)
    generated = 0
    last = clock()
    pending = await verifier.open(committed)
    sent = clock()
    await drafter.start(committed)
    index, k, proposal, draft_ns = 0, 0, NO_PROPOSAL, 0
    while True:
        verdict = await pending
        now = clock()
        drafter.observe(verdict)
        tokens, finish = _commit(committed, proposal, verdict, budget, generated)
        generated += len(tokens)
        position = len(committed) - len(tokens)
        timings = (draft_ns, now - sent, now - last)
        rnd = _round(index, position, k, proposal, verdict, tokens, finish, timings)
        policy.observe(rnd)
        last = now
        if finish is not None:
            yield rnd
            return
        room = budget.room(len(committed), generated) - 1
        k = max(0, min(policy.next_depth(), room)) if drafter.available else 0
        asked = clock()
        proposal = await drafter.propose(committed, k) if k else NO_PROPOSAL
        if len(proposal) > k:
            raise RuntimeError(f"the drafter returned {len(proposal)} tokens for k = {k}")
        draft_ns = clock() - asked
        pending = await verifier.verify(committed, proposal)
        sent = clock()
        if k:
            await drafter.verifying(committed, proposal)
        yield rnd
        index += 1


def _commit(
    committed: list[int], proposal: Proposal, verdict: Verdict, budget: Budget, generated: int
) -> tuple[tuple[int, ...], str | None]:
    """Append the verdict's tokens up to a stop token or the budget; return them and the
    finish reason (None while generation goes on)."""
    accepted = list(proposal.token_ids[: verdict.num_accepted])
    room = budget.room(len(committed), generated)
    tokens = (accepted + [verdict.next_token_id])[:room]
    for i, token in enumerate(tokens):
        if token in budget.stop_token_ids:
            tokens = tokens[: i + 1]
            committed.extend(tokens)
            return tuple(tokens), "stop"
    committed.extend(tokens)
    full = generated + len(tokens) >= budget.max_tokens or len(committed) >= budget.max_context
    return tuple(tokens), "length" if full else None


def _round(
    index: int,
    position: int,
    k: int,
    proposal: Proposal,
    verdict: Verdict,
    tokens: tuple[int, ...],
    finish: str | None,
    timings: tuple[int, int, int],
) -> Round:
    """The round record; ``timings`` are the loop's own: (draft_ns, rtt_ns, round_ns)."""
    proposed = len(proposal)
    draft_ns, rtt_ns, round_ns = timings
    return Round(
        index=index,
        position=position,
        depth=k,
        num_proposed=proposed,
        num_accepted=min(verdict.num_accepted, proposed),
        token_ids=tokens,
        finish=finish,
        ahead=proposal.ahead,
        draft_ns=draft_ns,
        verify_ns=verdict.forward_ns,
        queue_ns=verdict.queue_ns,
        service_ns=verdict.service_ns,
        rtt_ns=rtt_ns,
        round_ns=round_ns,
        verifier_active=verdict.verifier_active,
        verifier_queue=verdict.verifier_queue,
        batch_size=verdict.batch_size,
        cached_prompt_tokens=verdict.cached_prompt_tokens,
        logprobs=tuple(verdict.logprobs[: len(tokens)]),
    )
