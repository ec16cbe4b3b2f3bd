"""The OpenAI-compatible routes of the router (Starlette): a second face of the same router.

``POST /v1/completions`` and ``POST /v1/chat/completions`` (whole, or streamed as server-sent
events ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health`` (200 while a
verifier is up and its slots are known, else 503) and ``GET /metrics`` (Prometheus, as vLLM
serves it on its API port); neither of the last two needs an API key. Each request goes the
gRPC way: the caller's API key (``serving/auth.py``, the ``Authorization: Bearer`` header), the
same validation (``parse_request``), the same admission queue and speculation loop
(``fanout.py``), and is counted in the same ``specdec_requests_total`` by gRPC status name.
Every error is OpenAI's JSON (``errors.py``); an error after a stream has begun
is sent as an event with an ``error`` object, then ``[DONE]``.

With ``logprobs`` asked for, each choice carries the target's raw logprobs of its tokens
(``logprobs.py``), whole or chunk by chunk.

Non-goals: the legacy engines/edits endpoints, embeddings, files, prompt logprobs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from specdec.router.http.chat_template import ChatTemplate
from specdec.router.http.convert import Choice, chat_prompt, choices, completion_prompts, max_tokens
from specdec.router.http.errors import ApiError, bad_request, from_exception, model_not_found
from specdec.router.http.fanout import Fanout
from specdec.router.http.logprobs import ChatLogprobs, CompletionLogprobs, TokenTexts
from specdec.router.http.responses import Answer, finish_name, sse, usage
from specdec.router.http.schemas import ChatCompletionRequest, CommonParams, CompletionRequest
from specdec.router.http.schemas import unsupported as unsupported_field
from specdec.router.speculation import RouterDeps
from specdec.serving import metrics
from specdec.serving.auth import ApiKeys
from specdec.v1 import generation_pb2

MAX_BODY_BYTES = 8 * 1024 * 1024


def ready(deps: RouterDeps) -> bool:
    """A verifier is up (and, with an admission queue, has told the router its slots)."""
    if deps.admission is not None:
        return deps.admission.capacity() is not None
    return any(r.up for r in deps.verifiers.replicas.values())


@dataclass
class OpenAIFace:
    """What the routes need: the router's deps, the served model's id, keys and template."""

    deps: RouterDeps
    model_id: str
    api_keys: ApiKeys | None = None
    template: ChatTemplate | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    def app(self) -> Starlette:
        routes = [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        handlers = {HTTPException: _http_error, Exception: _unexpected}
        return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]

    async def health(self, request: Request) -> Response:
        if ready(self.deps):
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "no verifier is up"}, status_code=503)

    async def metrics(self, request: Request) -> Response:
        """The router's Prometheus metrics, as on ``--metrics-port``: an inference gateway's
        endpoint picker scrapes the pool's target port by default, as vLLM serves them."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        try:
            self._identify(request)
        except Exception as exc:
            return from_exception(exc).response()
        card = {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "specdec",
            "max_model_len": self.deps.limits.max_context_tokens,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    def _identify(self, request: Request) -> str:
        if self.api_keys is None:
            return ""
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(
                401,
                "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                "authentication_error",
                code="invalid_api_key",
            )
        return self.api_keys.identify([("authorization", header)])

    async def _generate(self, request: Request, kind: Literal["completion", "chat"]) -> Response:
        request_id = uuid.uuid4().hex
        try:
            identity = self._identify(request)
            schema = CompletionRequest if kind == "completion" else ChatCompletionRequest
            body = await _body(request, schema)
            if body.model is not None and body.model != self.model_id:
                raise model_not_found(body.model)
            refused = unsupported_field(body)
            if refused is not None:
                raise bad_request(*refused)
            deps = self.deps
            if isinstance(body, CompletionRequest):
                prompts = await completion_prompts(body, deps.tokenizer, deps.limits)
            elif isinstance(body, ChatCompletionRequest):
                prompts = [await chat_prompt(body, self.template, deps.tokenizer, deps.limits)]
            param = "prompt" if kind == "completion" else "messages"
            budget = max_tokens(body, prompts, deps.limits, param)
            chosen = choices(body, prompts, budget, request_id)
            fanout = Fanout(deps, chosen, identity)
            await fanout.start()
        except Exception as exc:
            return _failed(exc, request_id)
        answer = Answer(kind, self.model_id, request_id)
        shapes = _logprob_shapes(kind, chosen, self.deps)
        if body.stream:
            events = _stream(fanout, answer, chosen, body.include_usage(), request_id, shapes)
            headers = {"Cache-Control": "no-cache"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        status = "CANCELLED"  # unless it ends otherwise: the client went away
        try:
            whole = await _whole(fanout, answer, chosen, shapes)
            status = "OK"
            return JSONResponse(whole)
        except Exception as exc:
            status = ""  # counted by _failed
            return _failed(exc, request_id)
        finally:
            if status:
                metrics.REQUESTS.labels(status).inc()
            await fanout.close()


def _failed(exc: BaseException, request_id: str) -> Response:
    """The error answer for ``exc``, counted under its gRPC status name."""
    error = from_exception(exc, request_id)
    metrics.REQUESTS.labels(error.grpc_status).inc()
    return error.response()


async def _body(request: Request, schema: type[CommonParams]) -> CommonParams:
    """The request's JSON body as ``schema``; a 400 naming the first bad field otherwise."""
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    try:
        return schema.model_validate_json(bytes(raw))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        param = param.split(".", 1)[0] if error["type"] == "json_invalid" else param
        message = f"{param}: {error['msg']}" if param else f"invalid JSON body: {error['msg']}"
        raise bad_request(param or None, message) from exc


LogprobShape: TypeAlias = CompletionLogprobs | ChatLogprobs


def _logprob_shapes(
    kind: Literal["completion", "chat"], chosen: Sequence[Choice], deps: RouterDeps
) -> dict[int, LogprobShape] | None:
    """One logprobs writer per choice when they were asked for; None otherwise."""
    if not chosen or not chosen[0].message.HasField("logprobs"):
        return None
    texts = TokenTexts(deps.tokenizer)
    shape = CompletionLogprobs if kind == "completion" else ChatLogprobs
    return {c.index: shape(texts) for c in chosen}


async def _whole(
    fanout: Fanout,
    answer: Answer,
    chosen: Sequence[Choice],
    shapes: dict[int, LogprobShape] | None,
) -> dict[str, Any]:
    texts = {c.index: "" for c in chosen}
    found: dict[int, list[Any]] = {c.index: [] for c in chosen}
    finishes: dict[int, int] = {}
    stats: dict[int, generation_pb2.GenerationStats] = {}
    async for index, response in fanout.events():
        texts[index] += response.text
        found[index] += response.logprobs
        if response.HasField("stats"):
            finishes[index] = response.finish_reason
            stats[index] = response.stats
    logprobs = None
    if shapes is not None:
        logprobs = {index: shapes[index].shape(found[index]) for index in found}
    return answer.whole(texts, finishes, usage(chosen, stats), logprobs)


async def _stream(
    fanout: Fanout,
    answer: Answer,
    chosen: Sequence[Choice],
    with_usage: bool,
    request_id: str,
    shapes: dict[int, LogprobShape] | None,
) -> AsyncIterator[str]:
    begun: set[int] = set()
    stats: dict[int, generation_pb2.GenerationStats] = {}
    status = "CANCELLED"  # unless it ends otherwise: the client went away
    try:
        async for index, response in fanout.events():
            first = index not in begun
            begun.add(index)
            finish = None
            if response.HasField("stats"):
                finish = finish_name(response.finish_reason)
                stats[index] = response.stats
            logprobs = None
            if shapes is not None and response.logprobs:
                logprobs = shapes[index].shape(response.logprobs)
            if response.text or first or finish or logprobs:
                chunk = answer.chunk(index, response.text, finish, first, with_usage, logprobs)
                yield sse(chunk)
        status = "OK"
        if with_usage:
            yield sse(answer.usage_chunk(usage(chosen, stats)))
    except Exception as exc:  # the answer has begun: the error goes in the stream
        error = from_exception(exc, request_id)
        status = error.grpc_status
        yield sse(error.body())
    finally:
        metrics.REQUESTS.labels(status).inc()
        await fanout.close()
    yield sse("[DONE]")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) in OpenAI's shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "error"
    message = f"{request.method} {request.url.path}: {detail}"
    return ApiError(status, message, code=str(status)).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    return from_exception(exc).response()
