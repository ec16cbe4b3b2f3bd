"""Errors the engine raises, each one a distinct type a service can map to a gRPC status.

The engine knows no gRPC: the services translate these (``InvalidRequest`` to INVALID_ARGUMENT,
``OutOfSlots`` to RESOURCE_EXHAUSTED, ``CheckpointError`` to a failed start-up).
"""

from __future__ import annotations


class SpecdecError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidRequest(SpecdecError, ValueError):
    """A request field is out of range; ``field`` names it so the caller can fix it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class OutOfSlots(SpecdecError):
    """Every KV-cache slot is taken; retry later or on another replica."""


class CheckpointError(SpecdecError):
    """A model folder is missing a file, holds a corrupt one, or describes an unknown model."""
