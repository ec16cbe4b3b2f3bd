"""Malformed request bytes become INVALID_ARGUMENT naming the message, on every RPC.

grpc decodes each request before the servicer sees it; bytes that are not the message (a
corrupt wire format, invalid UTF-8 in a string field) make its deserializer raise, and grpc.aio
answers UNKNOWN with the exception's class (unary requests) or hands the error to the handler
(streams), which logs a traceback. ``DecodeGuard`` wraps every method handler so a request that
does not decode becomes a ``Malformed`` marker instead, and the wrapped behaviour ends the call
with INVALID_ARGUMENT "VerifyRequest: malformed protobuf (...)" (a stream: as its handler ends
any ``InvalidRequest``). Logged at INFO: a bad client is not a bug here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from specdec.core.errors import InvalidRequest

log = logging.getLogger("specdec.rpc")


class Malformed:
    """A request that did not decode as ``message`` (the message type's name)."""

    def __init__(self, message: str, reason: str) -> None:
        self.error = InvalidRequest(message, f"malformed protobuf ({reason})")


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    message = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = message.name if message is not None else "request"

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            reason = str(exc).rpartition(": ")[2] or "cannot parse"
            return Malformed(name, reason)

    return decode


async def _refuse(context: grpc.aio.ServicerContext, bad: Malformed) -> None:
    log.info("refused a request: %s", bad.error)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(bad.error))


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream that raises ``InvalidRequest`` at its first malformed message."""
    async for msg in requests:
        if isinstance(msg, Malformed):
            raise msg.error
        yield msg


def _unary_in(behavior: Callable[..., Any], streaming_out: bool) -> Callable[..., Any]:
    if streaming_out:

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await _refuse(context, request)
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:
                await result

        return unary_stream

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await _refuse(context, request)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return unary_unary


def _stream_in(behavior: Callable[..., Any], streaming_out: bool) -> Callable[..., Any]:
    if streaming_out:

        async def stream_stream(requests: AsyncIterator[Any], context: Any) -> Any:
            result = behavior(_checked(requests), context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
            else:
                await result

        return stream_stream

    async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
        result = behavior(_checked(requests), context)
        return await result if inspect.isawaitable(result) else result

    return stream_unary


def guarded(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that never raises and a behaviour that refuses what
    did not decode."""
    if handler.request_deserializer is None:
        return handler  # raw bytes: nothing to decode
    kind = ("stream" if handler.request_streaming else "unary") + (
        "_stream" if handler.response_streaming else "_unary"
    )
    behavior = getattr(handler, kind)
    wrap = _stream_in if handler.request_streaming else _unary_in
    return handler._replace(  # type: ignore[attr-defined]
        request_deserializer=_safe(handler.request_deserializer),
        **{kind: wrap(behavior, handler.response_streaming)},
    )


class DecodeGuard(grpc.aio.ServerInterceptor):
    """The server interceptor applying ``guarded`` to every method."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return guarded(handler) if handler is not None else handler
