"""Errors specdec raises on purpose, each one a distinct type a service maps to a gRPC status.

Nothing here knows gRPC: the services translate (``InvalidRequest`` to INVALID_ARGUMENT,
``OutOfSlots`` to RESOURCE_EXHAUSTED, ``Unavailable`` to UNAVAILABLE, ``CheckpointError`` to a
failed start-up).
"""

from __future__ import annotations


class SpecdecError(Exception):
    """Base class of every error specdec raises on purpose."""


class InvalidRequest(SpecdecError, ValueError):
    """A request field is out of range; ``field`` names it so the caller can fix it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class OutOfSlots(SpecdecError):
    """Every KV-cache slot is taken; retry later or on another replica."""


class Unavailable(SpecdecError):
    """A replica this request needs is gone or not ready."""


class CheckpointError(SpecdecError):
    """A model folder is missing a file, holds a corrupt one, or describes an unknown model."""
