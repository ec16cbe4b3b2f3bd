"""Turn exceptions into gRPC statuses with messages a person can act on; never a stack trace.

``InvalidRequest`` → INVALID_ARGUMENT (the field is named), ``OutOfSlots`` → RESOURCE_EXHAUSTED,
``Unavailable`` → UNAVAILABLE, anything else → INTERNAL with a generic message (details go to
the server log with the request id).
"""

from __future__ import annotations

import logging

import grpc

from specdec.core.errors import InvalidRequest, OutOfSlots, Unavailable

log = logging.getLogger("specdec.rpc")


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for ``exc``."""
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, OutOfSlots):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry later"
    if isinstance(exc, Unavailable):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> None:
    """Log ``exc`` (with a traceback when it is a bug) and end the RPC with its status."""
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", what, exc_info=exc)
    else:
        log.info("%s: %s: %s", what, code.name, message)
    await context.abort(code, message)
