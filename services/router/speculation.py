"""One request, end to end: the router runs the speculation loop over the two streams.

``generate`` picks the replicas (the session's, when Redis says it holds the conversation's
cache), opens the verifier and draft ports (``ports.py``), runs the one speculation loop
(``specdec.core.speculation``) with the request's depth policy, and streams each round's tokens
out as text. The rounds' record feeds the statistics, metrics, the trace and (through the
policy) the load guard; the session store gets the final state.

Admission (``admission.py``): a request first waits for a verifier slot in the router's queue;
its wait is in the stats (``queue_ns``). A verifier that still refuses the open for want of a slot
(another router took it) sends the request back to wait, never to fail within the queue timeout.

Sessions belong to the caller identity: the Redis record and the session id sent to the replicas
are keyed by ``SessionKeys.session(identity, session_id)`` (``sessions.py``).

Under concurrency the router's ``LoadGuard`` may overrule an adaptive policy with k = 0 for a
while, when it has measured that speculation no longer pays at this load.

Failures: a draft that fails or times out is dropped and the request goes on at k = 0 (same
output, only slower). A verifier that fails is replaced by another replica, re-opened with the
whole committed sequence and the round it lost; randomness is keyed by position, so the output
does not change.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from specdec.core.depth import DepthPolicy
from specdec.core.errors import OutOfSlots
from specdec.core.rounds import Round, Tally
from specdec.core.speculation import Budget, Drafter, NoDrafter, speculate
from specdec.core.tokenizer import Tokenizer
from specdec.router.admission import Admission, Ticket
from specdec.router.depth_policy import make_policy
from specdec.router.detokenize import Detokenizer
from specdec.router.load_guard import GuardedPolicy, LoadGuard
from specdec.router.ports import StreamDrafter, StreamVerifier
from specdec.router.replicas import ReplicaPool
from specdec.router.request import Limits, Request
from specdec.router.sessions import SessionKeys, SessionRecord, SessionStore, extends
from specdec.serving import metrics
from specdec.serving.telemetry import inject_metadata
from specdec.v1 import common_pb2, draft_pb2, generation_pb2

log = logging.getLogger("specdec.router")

DEFAULT_AHEAD_WIDTH = 2  # outcomes of each round drafted ahead (BENCHMARKS.md)

_METHODS = {"model": draft_pb2.PROPOSE_METHOD_MODEL, "ngram": draft_pb2.PROPOSE_METHOD_NGRAM}
FINISH_NAMES = {
    generation_pb2.FINISH_REASON_EOS: "stop",
    generation_pb2.FINISH_REASON_LENGTH: "length",
    generation_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
}


@dataclass
class RouterDeps:
    """What every request needs from the router process."""

    tokenizer: Tokenizer
    limits: Limits
    eos_token_ids: frozenset[int]
    verifiers: ReplicaPool
    drafts: ReplicaPool
    sessions: SessionStore | None = None
    default_policy: str = "goodput"
    target_model: str = ""
    max_depth: int = 8
    draft_timeout_s: float = 2.0
    verify_timeout_s: float = 60.0
    draft_ahead: bool = True  # default for requests that do not say
    ahead_width: int = DEFAULT_AHEAD_WIDTH
    # Requests in flight above which draft-ahead pauses (each round asks): with company the
    # verifier batches, draft-ahead for one request delays the draft's answers to the others,
    # and the router's work on every proposal drafted ahead shares the verifier's CPU (demo
    # pair, two CPUs, on / off with no limit: 1.10x at 1 client, 0.94x at 2, 0.91x at 4).
    ahead_max_in_flight: int = 1
    in_flight: int = 0
    guard: LoadGuard | None = None  # None: adaptive policies are never overruled
    admission: Admission | None = None  # None: no queue (a full verifier refuses at once)
    session_keys: SessionKeys = field(default_factory=lambda: SessionKeys(secrets.token_bytes(32)))


async def generate(
    req: Request, deps: RouterDeps, parent: otel_context.Context | None = None
) -> AsyncIterator[generation_pb2.GenerateResponse]:
    """Stream the responses for ``req``; the last one carries the finish reason and stats.

    One span per request (a child of the caller's trace when it sent one); its context goes to
    the draft and the verifier in the stream metadata, so their spans join the same trace.
    """
    span = trace.get_tracer("specdec.router").start_span(
        "specdec.generate",
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes=_request_attributes(req, deps),
    )
    started = time.perf_counter_ns()
    ticket: Ticket | None = None
    try:
        if deps.admission is not None:
            ticket = await deps.admission.admit(req.identity)
            span.set_attribute("specdec.queue_ns", ticket.queued_ns)
        deps.in_flight += 1
        metrics.GATEWAY_RUNNING.inc()
        try:
            async for response in _generate(req, deps, span, started, ticket):
                yield response
        finally:
            deps.in_flight -= 1
            metrics.GATEWAY_RUNNING.dec()
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        if ticket is not None and deps.admission is not None:
            deps.admission.release(ticket)
        span.end()


def _request_attributes(req: Request, deps: RouterDeps) -> dict[str, Any]:
    """GenAI semantic-convention attributes where they fit."""
    return {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.request.model": deps.target_model,
        "gen_ai.request.max_tokens": req.max_tokens,
        "gen_ai.request.temperature": req.temperature,
        "gen_ai.request.top_p": req.top_p,
        "gen_ai.usage.input_tokens": len(req.prompt_ids),
        "specdec.request_id": req.request_id,
        "specdec.session_id": req.session_id,
    }


@dataclass
class _Setup:
    """A request's ports and policy."""

    verifier: StreamVerifier
    drafter: Drafter
    policy: DepthPolicy
    ahead: bool
    adaptive: bool  # the load guard may overrule its k
    session: str  # the session's key (SessionKeys.session); "": no session


async def _setup(req: Request, deps: RouterDeps, span: trace.Span) -> _Setup:
    metadata = inject_metadata(span)
    seed = req.seed if req.seed is not None else random.getrandbits(63)
    sampling = common_pb2.SamplingParams(
        temperature=req.temperature, top_k=req.top_k, top_p=req.top_p
    )
    keys = deps.session_keys
    session = keys.session(req.identity, req.session_id) if req.session_id else ""
    record = await deps.sessions.get(session) if deps.sessions and session else None
    affinity = record if record is not None and extends(record, req.prompt_ids, keys) else None
    method = req.draft_method or ("model" if len(deps.drafts) else "none")
    drafting = method != "none" and len(deps.drafts) > 0
    name = req.policy or deps.default_policy
    # A fixed depth above the adaptive policies' ceiling is still allowed (up to the bound).
    max_depth = max(deps.max_depth, req.fixed_depth) if name == "fixed" else deps.max_depth
    policy = make_policy(name, fixed_depth=req.fixed_depth, max_depth=max_depth)
    adaptive = drafting and name != "fixed"
    if adaptive and deps.guard is not None:
        policy = GuardedPolicy(policy, deps.guard)
    # A feature draft reads the target's hidden states and drafts on demand (no draft-ahead).
    features = method == "model" and drafting and await deps.drafts.reads_features()
    ahead = method == "model" and (deps.draft_ahead if req.draft_ahead is None else req.draft_ahead)
    ahead = ahead and not features
    verifier = StreamVerifier(
        deps.verifiers,
        affinity.verifier if affinity else None,
        sampling,
        seed,
        session,
        req.request_id,
        deps.verify_timeout_s,
        metadata,
        req.logprobs,
        hidden_states=features,
    )
    drafter: Drafter = NoDrafter()
    if drafting:
        open_msg = draft_pb2.OpenDraft(
            sampling=sampling,
            seed=seed,
            method=_METHODS[method],
            request_id=req.request_id,
            ahead=draft_pb2.AheadSettings(
                width=deps.ahead_width if ahead else 0, depth=max(policy.next_depth(), 1)
            ),
        )
        drafter = StreamDrafter(
            deps.drafts,
            affinity.draft if affinity else None,
            open_msg,
            deps.draft_timeout_s,
            metadata,
            ahead_now=lambda: deps.in_flight <= deps.ahead_max_in_flight,
        )
    return _Setup(verifier, drafter, policy, ahead, adaptive, session)


async def _end(setup: _Setup, rounds: AsyncGenerator[Round, None], guard: LoadGuard | None) -> None:
    """End the loop and both streams whatever happens: each stream holds a slot on its replica."""
    try:
        await rounds.aclose()
    finally:
        if guard is not None:
            guard.leave(setup.adaptive)
        await asyncio.gather(setup.verifier.close(), setup.drafter.close())


async def _first_round(
    req: Request, deps: RouterDeps, span: trace.Span, ticket: Ticket | None, budget: Budget
) -> tuple[_Setup, AsyncGenerator[Round, None], Round | None]:
    """Open the request's streams and run its first round. An admitted request whose verifier is
    full anyway (another router took the slot) waits for a slot and opens again."""
    while True:
        setup = await _setup(req, deps, span)
        if deps.guard is not None:
            deps.guard.enter(setup.adaptive)
        rounds = speculate(req.prompt_ids, budget, setup.drafter, setup.verifier, setup.policy)
        try:
            return setup, rounds, await anext(rounds, None)
        except BaseException as exc:
            await _end(setup, rounds, deps.guard)
            if not isinstance(exc, OutOfSlots) or ticket is None or deps.admission is None:
                raise
        await deps.admission.wait_for_slot(ticket)


async def _generate(
    req: Request, deps: RouterDeps, span: trace.Span, started: int, ticket: Ticket | None
) -> AsyncIterator[generation_pb2.GenerateResponse]:
    budget = Budget(req.max_tokens, deps.limits.max_context_tokens, deps.eos_token_ids)
    setup, rounds, rnd = await _first_round(req, deps, span, ticket, budget)
    tally = Tally()
    tokens: list[int] = []
    first_token_ns = 0
    detok = Detokenizer(deps.tokenizer, req.stop)
    finish = generation_pb2.FINISH_REASON_LENGTH
    try:
        while rnd is not None:
            tally.add(rnd)
            tokens += rnd.token_ids
            if rnd.index == 0:
                first_token_ns = time.perf_counter_ns() - started
            _observe(rnd, span, first_token_ns)
            text = detok.add(list(rnd.token_ids))
            if detok.stopped:
                finish = generation_pb2.FINISH_REASON_STOP_SEQUENCE
            elif rnd.finish == "stop":
                finish = generation_pb2.FINISH_REASON_EOS
            if text or rnd.token_ids:
                yield generation_pb2.GenerateResponse(
                    text=text, token_ids=rnd.token_ids, logprobs=rnd.logprobs
                )
            if detok.stopped:
                break
            rnd = await anext(rounds, None)
    finally:
        await _end(setup, rounds, deps.guard)
    stats = _stats(tally, req, setup, started, first_token_ns)
    stats.queue_ns = ticket.queued_ns if ticket is not None else 0
    _save_session(tally, list(req.prompt_ids) + tokens, req, deps, setup)
    span.set_attributes(
        {
            "gen_ai.usage.output_tokens": tally.output_tokens,
            "gen_ai.response.finish_reasons": [FINISH_NAMES[finish]],
            "specdec.rounds": tally.rounds,
            "specdec.accepted_tokens": tally.accepted_tokens,
            "specdec.draft_tokens": tally.draft_tokens,
            "specdec.ahead_hits": tally.ahead_hits,
        }
    )
    yield generation_pb2.GenerateResponse(text=detok.flush(), finish_reason=finish, stats=stats)


def _observe(rnd: Round, span: trace.Span, first_token_ns: int) -> None:
    """Metrics and the trace's round event."""
    metrics.DEPTH.observe(rnd.depth)
    if rnd.num_proposed:
        metrics.NUM_DRAFTS.inc()
        metrics.NUM_DRAFT_TOKENS.inc(rnd.num_proposed)
        metrics.NUM_ACCEPTED_TOKENS.inc(rnd.num_accepted)
        for i in range(rnd.num_accepted):
            metrics.ACCEPTED_PER_POS.labels(str(i)).inc()
    if rnd.ahead:
        metrics.AHEAD.labels(rnd.ahead).inc()
    if rnd.index == 0:
        metrics.TTFT.observe(first_token_ns / 1e9)
    else:
        gap = rnd.round_ns / 1e9 / max(len(rnd.token_ids), 1)
        for _ in rnd.token_ids:  # speculation delivers tokens in bursts: spread the gap
            metrics.ITL.observe(gap)
    span.add_event(
        "round",
        {
            "k": rnd.depth,
            "proposed": rnd.num_proposed,
            "accepted": rnd.num_accepted,
            "ahead": rnd.ahead,
            "draft_ns": rnd.draft_ns,
            "verify_ns": rnd.verify_ns,
            "service_ns": rnd.service_ns,
            "rtt_ns": rnd.rtt_ns,
            "round_ns": rnd.round_ns,
        },
    )


def _stats(
    tally: Tally, req: Request, setup: _Setup, started: int, first_token_ns: int
) -> generation_pb2.GenerationStats:
    total_ns = time.perf_counter_ns() - started
    drafter = setup.drafter
    return generation_pb2.GenerationStats(
        prompt_tokens=len(req.prompt_ids),
        output_tokens=tally.output_tokens,
        cached_prompt_tokens=tally.cached_prompt_tokens,
        rounds=tally.rounds,
        draft_tokens=tally.draft_tokens,
        accepted_tokens=tally.accepted_tokens,
        depths=tally.depths,
        accepted_per_position=tally.accepted_per_position[: max(tally.depths, default=0)],
        proposed_per_position=tally.proposed_per_position[: max(tally.depths, default=0)],
        rejections=tally.rejections,
        time_to_first_token_ns=first_token_ns,
        total_ns=total_ns,
        tokens_per_s=tally.output_tokens / (total_ns / 1e9) if total_ns else 0.0,
        draft_fallback=isinstance(drafter, StreamDrafter) and drafter.fell_back,
        request_id=req.request_id,
        draft_ahead=setup.ahead,
        ahead_hits=tally.ahead_hits,
        ahead_misses=tally.ahead_misses,
        ahead_hits_after_full=tally.ahead_hits_after_full,
        ahead_rounds_after_full=tally.ahead_rounds_after_full,
        ahead_hits_after_rejection=tally.ahead_hits_after_rejection,
        ahead_rounds_after_rejection=tally.ahead_rounds_after_rejection,
        draft_ns=tally.draft_ns,
        verify_forward_ns=tally.verify_forward_ns,
        verify_queue_ns=tally.verify_queue_ns,
        verify_service_ns=tally.verify_service_ns,
        network_ns=tally.network_ns,
        router_ns=tally.router_ns,
    )


def _save_session(
    tally: Tally, committed: list[int], req: Request, deps: RouterDeps, setup: _Setup
) -> None:
    verifier = setup.verifier.replica
    if deps.sessions is None or not setup.session or verifier is None:
        return
    drafter = setup.drafter
    draft = drafter.replica if isinstance(drafter, StreamDrafter) else None
    deps.sessions.put(
        SessionRecord(
            session_id=setup.session,
            verifier=verifier.address,
            draft=draft.address if draft else None,
            committed_len=len(committed),
            prefix_hash=deps.session_keys.prefix(committed),
            draft_tokens=tally.draft_tokens,
            accepted_tokens=tally.accepted_tokens,
            updated_unix_s=time.time(),
            owner=deps.session_keys.owner(req.identity),
        )
    )
