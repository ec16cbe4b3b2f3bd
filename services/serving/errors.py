"""Turn exceptions into gRPC statuses with messages a person can act on; never a stack trace.

``InvalidRequest`` → INVALID_ARGUMENT (the field is named), ``OutOfSlots`` → RESOURCE_EXHAUSTED,
``Unavailable`` → UNAVAILABLE, ``Unauthenticated`` → UNAUTHENTICATED, anything else → INTERNAL
with a generic message (details go to the server log with the request id). An error that says
when to retry (``retry_after_s``) carries a ``google.rpc.RetryInfo`` detail, the standard place
clients and gateways look for it.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from specdec.core.errors import (
    InternalFault,
    InvalidRequest,
    OutOfSlots,
    SpecdecError,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("specdec.rpc")

_CODES: list[tuple[type[SpecdecError], grpc.StatusCode]] = [
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (OutOfSlots, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (InternalFault, grpc.StatusCode.INTERNAL),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for ``exc``."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"


def retry_info(seconds: float) -> any_pb2.Any:
    """A ``google.rpc.RetryInfo`` detail asking the caller to wait ``seconds``."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return detail


def retry_after_s(error: grpc.RpcError) -> float | None:
    """The retry delay an error's status carries in a RetryInfo detail, if any (sync or aio)."""
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToNanoseconds() / 1e9
    return None


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException, what: str) -> None:
    """Log ``exc`` (with a traceback when it is a bug) and end the RPC with its status."""
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL and not isinstance(exc, SpecdecError):
        log.exception("%s failed", what, exc_info=exc)
    else:
        log.info("%s: %s: %s", what, code.name, message)
    retry = getattr(exc, "retry_after_s", None)
    if retry is None:
        await context.abort(code, message)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    status.details.append(retry_info(retry))
    await context.abort_with_status(rpc_status.to_status(status))
