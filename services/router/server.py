"""The public Generation servicer: validate, run the speculation loop, stream the answer.

The loop runs in its own task and hands its responses over through a queue: a slow client (or
a slow write) never holds up the next round, and responses that pile up meanwhile go out merged
into one message.

With API keys configured, a call without a known key is UNAUTHENTICATED before anything else
(``serving/auth.py``); the key's identity becomes the request's. Health needs no key.

Errors: bad input → INVALID_ARGUMENT naming the field; out of slots everywhere →
RESOURCE_EXHAUSTED (with the replica's retry hint); no replica → UNAVAILABLE; a replica refusing
a step the router built (not the client's fault) → INTERNAL naming the request id, the detail
in the log; anything else → INTERNAL without a stack trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

import grpc

from specdec.core.errors import InternalFault, OutOfSlots, Unauthenticated, Unavailable
from specdec.router.depth_policy import POLICIES
from specdec.router.request import parse_request
from specdec.router.speculation import RouterDeps, generate
from specdec.serving import metrics
from specdec.serving.auth import ApiKeys
from specdec.serving.errors import abort_with, retry_after_s, status_for
from specdec.serving.telemetry import extract_context
from specdec.v1 import generation_pb2, generation_pb2_grpc

log = logging.getLogger("specdec.router")


def from_replica(exc: grpc.aio.AioRpcError, request_id: str) -> Exception:
    """A replica's error, as the router's client should see it."""
    details = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        # The router checked the client's request at its edge: a replica refusing a step the
        # router (or the draft) built is an internal fault, not the client's.
        log.warning("request %s: a replica refused a step: %s", request_id, details)
        return InternalFault(
            f"an internal service refused a step (request id {request_id}); "
            "the router log has the detail"
        )
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return OutOfSlots(details, retry_after_s=retry_after_s(exc))
    return Unavailable(f"a replica failed: {details}")


async def _decoupled(
    responses: AsyncIterator[generation_pb2.GenerateResponse],
) -> AsyncIterator[generation_pb2.GenerateResponse]:
    """``responses``, produced by a task of their own; those that pile up while the caller is
    busy come out merged into one."""
    pending: deque[generation_pb2.GenerateResponse] = deque()
    ready = asyncio.Event()

    async def produce() -> None:
        try:
            async for response in responses:
                pending.append(response)
                ready.set()
        finally:
            ready.set()

    task = asyncio.get_running_loop().create_task(produce())
    try:
        while pending or not task.done():
            await ready.wait()
            ready.clear()
            if pending:
                yield _merged(pending)
        await task  # raises what the loop raised
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _merged(pending: deque[generation_pb2.GenerateResponse]) -> generation_pb2.GenerateResponse:
    """Empty ``pending`` into one response (the last one's finish reason and stats, if any)."""
    out = pending.popleft()
    while pending:
        nxt = pending.popleft()
        out.text += nxt.text
        out.token_ids.extend(nxt.token_ids)
        out.logprobs.extend(nxt.logprobs)
        if nxt.HasField("stats"):
            out.finish_reason = nxt.finish_reason
            out.stats.CopyFrom(nxt.stats)
    return out


class GenerationServicer(generation_pb2_grpc.GenerationServicer):
    def __init__(
        self,
        deps: RouterDeps,
        target_model: str,
        draft_model: str,
        api_keys: ApiKeys | None = None,  # None: no API keys asked (identity "")
    ) -> None:
        self.deps = deps
        self.api_keys = api_keys
        self.target_model = target_model
        self.draft_model = draft_model

    async def Generate(
        self, request: generation_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[generation_pb2.GenerateResponse]:
        status = "OK"
        request_id = ""
        try:
            keys = self.api_keys
            identity = keys.identify(context.invocation_metadata()) if keys else ""
            deps = self.deps
            req = await parse_request(request, deps.tokenizer, deps.limits, identity)
            request_id = req.request_id
            parent = extract_context(context.invocation_metadata())
            async for response in _decoupled(generate(req, self.deps, parent)):
                yield response
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise  # the client went away; the streams' finally blocks free the slots
        except Exception as exc:
            error = from_replica(exc, request_id) if isinstance(exc, grpc.aio.AioRpcError) else exc
            status = status_for(error)[0].name
            await abort_with(context, error, "Generate")
        finally:
            metrics.REQUESTS.labels(status).inc()

    async def GetInfo(
        self, request: generation_pb2.GetInfoRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GetInfoResponse:
        if self.api_keys is not None:
            try:
                self.api_keys.identify(context.invocation_metadata())
            except Unauthenticated as exc:
                await abort_with(context, exc, "GetInfo")
        limits = self.deps.limits
        return generation_pb2.GetInfoResponse(
            target_model=self.target_model,
            draft_model=self.draft_model,
            vocab_size=limits.vocab_size,
            max_context_tokens=limits.max_context_tokens,
            max_output_tokens=limits.max_output_tokens,
            depth_policies=sorted(POLICIES),
            verifier_replicas=len(self.deps.verifiers),
            draft_replicas=len(self.deps.drafts),
        )
