"""The shape both internal streams share: open once, then steps, always clean up.

A replica's stream handler implements ``StreamHandler``: ``open`` takes the first message's
``open`` field, ``step`` each later ``step`` field; either may answer. ``close`` frees what
``open`` took (a KV-cache slot) whatever way the stream ends: done, cancelled, past its
deadline, or failed. Both drivers run under one server span that joins the caller's trace.

``serve_stream`` sends each answer in order, right after its message (the verifier).
``serve_duplex`` also sends what the handler puts in its ``outbox`` unasked, as soon as it is
there (the draft, whose speculated proposals follow no request); a reader task takes the
requests meanwhile.

``StreamGuard`` (a server interceptor) keeps idle or abandoned streams from holding slots: a
stream whose peer sends nothing for ``idle_s`` seconds while the replica waits for its next
message ends with UNAVAILABLE (its slot freed by ``close``), and one connection may hold at
most ``max_per_peer`` streams (0: no cap beyond the server's per-connection stream limit). A
connection, not an address: the router multiplexes all its streams to a replica over one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
from opentelemetry import trace

from specdec.core.errors import InvalidRequest, Unavailable
from specdec.serving.errors import abort_with
from specdec.serving.telemetry import extract_context

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class StreamHandler(Protocol, Generic[R_co]):
    async def open(self, msg: Any, span: trace.Span) -> R_co | None: ...

    async def step(self, msg: Any, span: trace.Span) -> R_co | None: ...

    def close(self) -> None: ...


class _Dispatch(Generic[R]):
    """Routes one stream's messages (a ``kind`` oneof: open | step) to its handler."""

    def __init__(self, handler: StreamHandler[R]) -> None:
        self.handler = handler
        self.opened = False

    async def __call__(self, msg: Any, span: trace.Span) -> R | None:
        if msg.WhichOneof("kind") == "open":
            if self.opened:
                raise InvalidRequest("open", "the stream already opened a sequence")
            self.opened = True  # set first: close() must run even if open() is cancelled
            return await self.handler.open(msg.open, span)
        if not self.opened:
            raise InvalidRequest("open", "the first message of a stream must open it")
        return await self.handler.step(msg.step, span)


@contextlib.asynccontextmanager
async def _scope(
    context: grpc.aio.ServicerContext, handler: StreamHandler[Any], name: str
) -> AsyncIterator[trace.Span]:
    """The stream's server span; a failure ends the call with its status; ``close`` always."""
    span = trace.get_tracer("specdec.serving").start_span(
        name, context=extract_context(context.invocation_metadata()), kind=trace.SpanKind.SERVER
    )
    try:
        yield span
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        span.record_exception(exc)
        await abort_with(context, exc, name)
    finally:
        span.end()
        handler.close()


async def serve_stream(
    requests: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    handler: StreamHandler[R],
    span_name: str,
) -> AsyncIterator[R]:
    """Answer each message in turn."""
    dispatch = _Dispatch(handler)
    async with _scope(context, handler, span_name) as span:
        async for msg in requests:
            answer = await dispatch(msg, span)
            if answer is not None:
                yield answer


class _End:
    """The requests ended (``error`` None) or failed."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error


async def serve_duplex(
    requests: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    handler: StreamHandler[R],
    outbox: asyncio.Queue[Any],
    span_name: str,
) -> AsyncIterator[R]:
    """Send whatever lands in ``outbox`` (answers and unasked messages alike) until the
    requests end."""
    dispatch = _Dispatch(handler)

    async def read(span: trace.Span) -> None:
        try:
            async for msg in requests:
                answer = await dispatch(msg, span)
                if answer is not None:
                    outbox.put_nowait(answer)
        except Exception as exc:
            outbox.put_nowait(_End(exc))
        else:
            outbox.put_nowait(_End())

    async with _scope(context, handler, span_name) as span:
        reader = asyncio.get_running_loop().create_task(read(span))
        try:
            while not isinstance(item := await outbox.get(), _End):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            reader.cancel()


DEFAULT_IDLE_S = 60.0  # far above any gap the router leaves (a k = 0 stretch leaves the draft's)


class StreamIdle(Unavailable):
    """The peer sent nothing for too long; the stream was closed and its slot freed."""


async def _idle_limited(requests: AsyncIterator[Any], idle_s: float) -> AsyncIterator[Any]:
    """``requests``, ending with ``StreamIdle`` when the next one takes over ``idle_s``."""
    it = aiter(requests)
    while True:
        try:
            async with asyncio.timeout(idle_s):
                msg = await anext(it)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StreamIdle(
                f"the stream sent nothing for {idle_s:g} s; closed and its slot freed"
            ) from None
        yield msg


class StreamGuard(grpc.aio.ServerInterceptor):
    """Idle timeout and per-connection cap on a server's bidirectional streams."""

    def __init__(self, idle_s: float = DEFAULT_IDLE_S, max_per_peer: int = 0) -> None:
        if idle_s <= 0 or max_per_peer < 0:
            raise ValueError("idle_s must be > 0 and max_per_peer >= 0")
        self.idle_s = idle_s
        self.max_per_peer = max_per_peer
        self.open: Counter[str] = Counter()  # streams open per peer (connection)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not (handler.request_streaming and handler.response_streaming):
            return handler
        inner = handler.stream_stream

        async def guarded(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            peer = context.peer()
            if self.max_per_peer and self.open[peer] >= self.max_per_peer:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this connection already holds {self.max_per_peer} streams, the most one "
                    "peer may; close one first",
                )
            self.open[peer] += 1
            try:
                async for answer in inner(_idle_limited(requests, self.idle_s), context):
                    yield answer
            finally:
                self.open[peer] -= 1
                if not self.open[peer]:
                    del self.open[peer]

        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
