"""The shape both internal streams share: open once, then answer steps, always clean up.

A replica's stream handler implements ``StreamHandler``: ``open`` takes the first message's
``open`` field, ``step`` answers each later ``step`` field, ``close`` frees what ``open`` took
(a KV-cache slot) whatever way the stream ends: done, cancelled, past its deadline, or failed.
``serve_stream`` runs that protocol under one server span that joins the caller's trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Generic, Protocol, TypeVar

import grpc
from opentelemetry import trace

from specdec.core.errors import InvalidRequest
from specdec.serving.errors import abort_with
from specdec.serving.telemetry import extract_context

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class StreamHandler(Protocol, Generic[R_co]):
    async def open(self, msg: Any, span: trace.Span) -> None: ...

    async def step(self, msg: Any, span: trace.Span) -> R_co: ...

    def close(self) -> None: ...


async def serve_stream(
    requests: AsyncIterator[Any],
    context: grpc.aio.ServicerContext,
    handler: StreamHandler[R],
    span_name: str,
) -> AsyncIterator[R]:
    """Drive ``handler`` over a stream whose messages have a ``kind`` oneof (open | step)."""
    tracer = trace.get_tracer("specdec.serving")
    span = tracer.start_span(
        span_name,
        context=extract_context(context.invocation_metadata()),
        kind=trace.SpanKind.SERVER,
    )
    opened = False
    try:
        async for msg in requests:
            if msg.WhichOneof("kind") == "open":
                if opened:
                    raise InvalidRequest("open", "the stream already opened a sequence")
                opened = True  # set first: close() must run even if open() is cancelled
                await handler.open(msg.open, span)
                continue
            if not opened:
                raise InvalidRequest("open", "the first message of a stream must open it")
            yield await handler.step(msg.step, span)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        span.record_exception(exc)
        await abort_with(context, exc, span_name)
    finally:
        span.end()
        handler.close()
