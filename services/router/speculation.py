"""One request, end to end: the speculation loop the router runs over the two streams.

Each round: ask the depth policy for k; ask the draft for k tokens (skipped when k = 0); send
them to the verifier, which keeps the longest accepted prefix and adds one token of its own;
stream the new tokens out; tell the policy what it cost. The verifier is authoritative: the
committed sequence only ever grows by what it returns.

Under concurrency the router's ``LoadGuard`` may overrule an adaptive policy with k = 0 for a
while, when it has measured that speculation no longer pays at this load.

Failures: a draft that fails or times out is dropped and the request goes on at k = 0 (same
output, only slower). A verifier that fails is replaced by another replica, re-opened with the
whole committed sequence; randomness is keyed by position, so the output does not change.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from specdec.core.errors import OutOfSlots, Unavailable
from specdec.core.tokenizer import Tokenizer
from specdec.router.depth_policy import DepthPolicy, RoundObservation, make_policy
from specdec.router.detokenize import Detokenizer
from specdec.router.load_guard import LoadGuard
from specdec.router.replicas import Replica, ReplicaPool
from specdec.router.request import Limits, Request
from specdec.router.sessions import SessionRecord, SessionStore, extends, hash_tokens
from specdec.router.streams import DraftStream, StreamClosed, VerifierStream
from specdec.serving import metrics
from specdec.serving.telemetry import inject_metadata
from specdec.v1 import common_pb2, generation_pb2

log = logging.getLogger("specdec.router")

VERIFIER_RETRIES = 2
_FAILOVER_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


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
    guard: LoadGuard | None = None  # None: adaptive policies are never overruled


@dataclass
class _State:
    req: Request
    committed: list[int]
    generated: list[int] = field(default_factory=list)
    stats: generation_pb2.GenerationStats = field(default_factory=generation_pb2.GenerationStats)
    accepted_per_position: list[int] = field(default_factory=lambda: [0] * 16)


def _sampling(req: Request) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p)


def _policy(req: Request, deps: RouterDeps) -> DepthPolicy:
    name = req.policy or deps.default_policy
    # A fixed depth above the adaptive policies' ceiling is still allowed (up to MAX_DEPTH).
    max_depth = max(deps.max_depth, req.fixed_depth) if name == "fixed" else deps.max_depth
    return make_policy(name, fixed_depth=req.fixed_depth, max_depth=max_depth)


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
    try:
        async for response in _generate(req, deps, span):
            yield response
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
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


async def _generate(
    req: Request, deps: RouterDeps, span: trace.Span
) -> AsyncIterator[generation_pb2.GenerateResponse]:
    metadata = inject_metadata(span)
    started = time.perf_counter_ns()
    last_emit = started
    seed = req.seed if req.seed is not None else random.getrandbits(63)
    sampling = _sampling(req)
    state = _State(req, list(req.prompt_ids))
    state.stats.request_id = req.request_id
    state.stats.prompt_tokens = len(req.prompt_ids)
    record = await deps.sessions.get(req.session_id) if deps.sessions and req.session_id else None
    affinity = record if record is not None and extends(record, req.prompt_ids) else None

    method = req.draft_method or ("model" if len(deps.drafts) else "none")
    policy = _policy(req, deps)
    detok = Detokenizer(deps.tokenizer, req.stop)
    verifier = await _open_verifier(state, deps, sampling, seed, affinity, metadata, set())
    # Opened at the first round that drafts: a request the load guard keeps at k = 0 never
    # pays for a draft stream and its prompt prefill.
    drafting = method != "none" and len(deps.drafts) > 0
    draft: DraftStream | None = None
    finish = generation_pb2.FINISH_REASON_LENGTH
    tried: set[str] = set()
    guard = deps.guard
    adaptive = drafting and policy.name != "fixed"  # the load guard may overrule its k
    if guard is not None:
        guard.enter(adaptive)
    try:
        max_len = deps.limits.max_context_tokens
        while len(state.generated) < req.max_tokens and len(state.committed) < max_len:
            room = min(req.max_tokens - len(state.generated), max_len - len(state.committed)) - 1
            k = min(policy.next_depth(), room) if drafting else 0
            if guard is not None and adaptive and drafting and guard.plain():
                k = 0
            if k > 0 and draft is None:  # outside the round's time, as when opened up front
                draft = await _open_draft(
                    state,
                    deps,
                    sampling,
                    seed,
                    method == "ngram",
                    affinity.draft if affinity else None,
                    metadata,
                )
                if draft is None:
                    drafting, k, state.stats.draft_fallback = False, 0, True
            round_start = time.perf_counter_ns()
            drafts, probs, draft_ns = [], [], 0
            if k > 0 and draft is not None:
                try:
                    proposal = await draft.propose(state.committed, k)
                    drafts, probs, draft_ns = (
                        list(proposal.draft_token_ids),
                        list(proposal.draft_probs),
                        proposal.draft_ns,
                    )
                except Exception as exc:
                    log.warning(
                        "draft %s failed (%s); continuing at k=0", draft.replica.address, exc
                    )
                    deps.drafts.mark_down(draft.replica)
                    await draft.close()
                    draft, drafting, state.stats.draft_fallback = None, False, True
            try:
                reply = await verifier.step(len(state.committed), drafts, probs)
            except (grpc.aio.AioRpcError, StreamClosed, TimeoutError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() not in _FAILOVER_CODES:
                    raise
                tried.add(verifier.replica.address)
                verifier = await _fail_over(
                    verifier, state, deps, sampling, seed, metadata, tried, exc
                )
                continue
            new = drafts[: reply.num_accepted] + [reply.next_token_id]
            _record_round(state, k, len(drafts), reply.num_accepted)
            span.add_event(
                "round",
                {
                    "k": k,
                    "proposed": len(drafts),
                    "accepted": reply.num_accepted,
                    "draft_ns": draft_ns,
                    "verify_ns": reply.verify_ns,
                },
            )
            if state.stats.rounds == 1:
                state.stats.cached_prompt_tokens = reply.cached_prompt_tokens
            policy.observe(
                RoundObservation(
                    depth=k,
                    num_proposed=len(drafts),
                    num_accepted=reply.num_accepted,
                    draft_ns=draft_ns,
                    verify_ns=reply.verify_ns,
                    round_ns=time.perf_counter_ns() - round_start,
                    verifier_active=reply.load.active_sequences,
                    verifier_queue=reply.load.queued_steps,
                )
            )
            emitted, stop = _commit(state, new, deps)
            text = detok.add(emitted)
            now = time.perf_counter_ns()
            if guard is not None and adaptive:
                guard.record(len(new), now - last_emit if state.stats.rounds > 1 else None)
            if state.stats.rounds == 1:
                state.stats.time_to_first_token_ns = now - started
                metrics.TTFT.observe((now - started) / 1e9)
            else:
                for _ in emitted:  # speculation delivers tokens in bursts: spread the gap
                    metrics.ITL.observe((now - last_emit) / 1e9 / len(emitted))
            last_emit = now
            if detok.stopped:
                finish = generation_pb2.FINISH_REASON_STOP_SEQUENCE
            elif stop:
                finish = generation_pb2.FINISH_REASON_EOS
            if text or emitted:
                yield generation_pb2.GenerateResponse(text=text, token_ids=emitted)
            if detok.stopped or stop:
                break
    finally:
        if guard is not None:
            guard.leave(adaptive)
        await verifier.close()
        if draft is not None:
            await draft.close()
    total_ns = time.perf_counter_ns() - started
    state.stats.output_tokens = len(state.generated)
    state.stats.total_ns = total_ns
    state.stats.tokens_per_s = len(state.generated) / (total_ns / 1e9) if total_ns else 0.0
    state.stats.accepted_per_position.extend(
        state.accepted_per_position[: max(state.stats.depths, default=0)]
    )
    _save_session(state, deps, verifier.replica, draft.replica if draft else None)
    span.set_attributes(
        {
            "gen_ai.usage.output_tokens": len(state.generated),
            "gen_ai.response.finish_reasons": [FINISH_NAMES[finish]],
            "specdec.rounds": state.stats.rounds,
            "specdec.accepted_tokens": state.stats.accepted_tokens,
            "specdec.draft_tokens": state.stats.draft_tokens,
        }
    )
    yield generation_pb2.GenerateResponse(
        text=detok.flush(), finish_reason=finish, stats=state.stats
    )


def _commit(state: _State, new: list[int], deps: RouterDeps) -> tuple[list[int], bool]:
    """Append the round's tokens up to an eos or the budget; return them and whether eos."""
    out = []
    for token in new:
        state.committed.append(token)
        state.generated.append(token)
        out.append(token)
        if token in deps.eos_token_ids:
            return out, True
        if len(state.generated) >= state.req.max_tokens:
            break
    return out, False


def _record_round(state: _State, k: int, proposed: int, accepted: int) -> None:
    metrics.DEPTH.observe(k)
    if proposed:
        metrics.NUM_DRAFTS.inc()
        metrics.NUM_DRAFT_TOKENS.inc(proposed)
        metrics.NUM_ACCEPTED_TOKENS.inc(accepted)
        for i in range(accepted):
            metrics.ACCEPTED_PER_POS.labels(str(i)).inc()
    state.stats.rounds += 1
    state.stats.depths.append(k)
    state.stats.draft_tokens += proposed
    state.stats.accepted_tokens += accepted
    for i in range(accepted):
        state.accepted_per_position[i] += 1


async def _open_verifier(
    state: _State,
    deps: RouterDeps,
    sampling: common_pb2.SamplingParams,
    seed: int,
    affinity: SessionRecord | None,
    metadata: tuple,
    tried: set[str],
) -> VerifierStream:
    """Open a verifier stream with the whole committed sequence; probe it with nothing."""
    preferred = affinity.verifier if affinity else None
    last: BaseException | None = None
    for _ in range(VERIFIER_RETRIES + 1):
        replica = deps.verifiers.pick(preferred, tried)
        try:
            return await VerifierStream.open(
                replica,
                state.committed,
                sampling,
                seed,
                state.req.session_id,
                state.req.request_id,
                deps.verify_timeout_s,
                metadata,
            )
        except grpc.aio.AioRpcError as exc:
            last = exc
            tried.add(replica.address)
            deps.verifiers.mark_down(replica)
            preferred = None
    raise Unavailable(f"no verifier replica could open the request ({last})")


async def _fail_over(
    old: VerifierStream,
    state: _State,
    deps: RouterDeps,
    sampling: common_pb2.SamplingParams,
    seed: int,
    metadata: tuple,
    tried: set[str],
    exc: BaseException,
) -> VerifierStream:
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise OutOfSlots(exc.details() or "verifier out of slots")
    log.warning("verifier %s failed (%s); re-opening on another replica", old.replica.address, exc)
    deps.verifiers.mark_down(old.replica)
    await old.close()
    if len(tried) > VERIFIER_RETRIES:
        raise Unavailable(f"verifiers failed {len(tried)} times for this request")
    return await _open_verifier(state, deps, sampling, seed, None, metadata, tried)


async def _open_draft(
    state: _State,
    deps: RouterDeps,
    sampling: common_pb2.SamplingParams,
    seed: int,
    ngram: bool,
    preferred: str | None,
    metadata: tuple,
) -> DraftStream | None:
    try:
        replica = deps.drafts.pick(preferred)
        return await DraftStream.open(
            replica,
            state.committed,
            sampling,
            seed,
            ngram,
            state.req.request_id,
            deps.draft_timeout_s,
            metadata,
        )
    except Exception as exc:
        log.warning("no draft for request %s (%s); k=0", state.req.request_id, exc)
        return None


def _save_session(
    state: _State, deps: RouterDeps, verifier: Replica, draft: Replica | None
) -> None:
    if deps.sessions is None or not state.req.session_id:
        return
    deps.sessions.put(
        SessionRecord(
            session_id=state.req.session_id,
            verifier=verifier.address,
            draft=draft.address if draft else None,
            committed_len=len(state.committed),
            prefix_hash=hash_tokens(state.committed),
            draft_tokens=state.stats.draft_tokens,
            accepted_tokens=state.stats.accepted_tokens,
            updated_unix_s=time.time(),
        )
    )
