"""Errors of the HTTP API in OpenAI's shape, from the same exceptions the gRPC API maps.

Every error is ``{"error": {"message", "type", "param", "code"}}`` with its HTTP status:
``InvalidRequest`` → 400 (``param`` names the OpenAI field, not the gRPC one), ``Unauthenticated``
→ 401, an unknown model → 404, ``OutOfSlots`` → 429 and ``Unavailable`` → 503 (both with a
``Retry-After`` header when the router knows when to retry), anything else → 500 with a generic
message (the detail and its traceback go to the log, never to the client).

Non-goals: OpenAI's rate-limit headers (``x-ratelimit-*``): the router has no per-key quotas.
"""

from __future__ import annotations

import logging
import math

import grpc
from starlette.responses import JSONResponse

from specdec.core.errors import (
    InternalFault,
    InvalidRequest,
    OutOfSlots,
    SpecdecError,
    Unauthenticated,
    Unavailable,
)
from specdec.router.server import from_replica  # the gRPC face's reading of a replica's error

log = logging.getLogger("specdec.router.http")

# gRPC request field (router/request.py) → the OpenAI parameter it comes from.
PARAMS = {
    "prompt_text": "prompt",
    "prompt_token_ids": "prompt",
    "sampling.temperature": "temperature",
    "sampling.top_p": "top_p",
    "max_tokens": "max_tokens",
    "stop": "stop",
    "session_id": "specdec.session_id",
    "depth_policy": "specdec.depth_policy",
    "fixed_depth": "specdec.k",
    "draft_method": "specdec.draft_method",
    "logprobs": "logprobs",
}


# HTTP status → the gRPC status name requests are counted under (``specdec_requests_total``).
GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    """An HTTP error answer: status, OpenAI error fields, optional retry hint."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    @property
    def grpc_status(self) -> str:
        """The gRPC status name of this error, for the request counter."""
        return GRPC_STATUS.get(self.status, "INTERNAL")

    def body(self) -> dict[str, object]:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error}

    def response(self) -> JSONResponse:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(param: str | None, message: str) -> ApiError:
    return ApiError(400, message, param=param)


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
    )


def from_exception(exc: BaseException, request_id: str = "") -> ApiError:
    """``exc`` (raised by validation or the speculation loop) as the client should see it."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        exc = from_replica(exc, request_id)
    retry = exc.retry_after_s if isinstance(exc, SpecdecError) else None
    if isinstance(exc, InvalidRequest):
        param = PARAMS.get(exc.field, exc.field)
        detail = str(exc).removeprefix(f"{exc.field}: ")
        return bad_request(param, f"{param}: {detail}")
    if isinstance(exc, Unauthenticated):
        return ApiError(401, str(exc), "authentication_error", code="invalid_api_key")
    if isinstance(exc, OutOfSlots):
        return ApiError(429, str(exc), "rate_limit_error", code="queue_full", retry_after_s=retry)
    if isinstance(exc, Unavailable):
        return ApiError(503, str(exc), "server_error", code="unavailable", retry_after_s=retry)
    if isinstance(exc, InternalFault):
        return ApiError(500, str(exc), "server_error", code="internal_error")
    log.error("request %s failed", request_id or "-", exc_info=exc)
    return ApiError(
        500, "internal error; the server log has the details", "server_error", code="internal_error"
    )
