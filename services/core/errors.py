"""Errors specdec raises on purpose, each one a distinct type a service maps to a gRPC status.

Nothing here knows gRPC: the services translate (``InvalidRequest`` to INVALID_ARGUMENT,
``OutOfSlots`` to RESOURCE_EXHAUSTED, ``Unavailable`` to UNAVAILABLE, ``Unauthenticated`` to
UNAUTHENTICATED, ``InternalFault`` to INTERNAL, ``CheckpointError`` to a failed start-up).
``retry_after_s``, when set, tells the caller how long to wait before trying again (sent as a
``google.rpc.RetryInfo`` detail).
"""

from __future__ import annotations


class SpecdecError(Exception):
    """Base class of every error specdec raises on purpose."""

    def __init__(self, message: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidRequest(SpecdecError, ValueError):
    """A request field is out of range; ``field`` names it so the caller can fix it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class OutOfSlots(SpecdecError):
    """Every KV-cache slot is taken (or the queue for them is full); retry later."""


class Unavailable(SpecdecError):
    """A replica this request needs is gone or not ready."""


class Unauthenticated(SpecdecError):
    """The caller sent no credentials, or ones this deployment does not know."""


class InternalFault(SpecdecError):
    """Something between the services went wrong, not the caller's request; the message (a
    request id to look up) is safe to show, the detail is in the server log."""


class CheckpointError(SpecdecError):
    """A model folder is missing a file, holds a corrupt one, or describes an unknown model."""
