"""The router's end of the two internal streams: one Verify and one Propose call per request.

Each wrapper opens its stream with the sequence's context and then sends position-addressed
steps, one at a time, awaiting each answer. Errors surface as ``grpc.aio.AioRpcError``; the
speculation loop decides whether to fail over (verifier) or fall back to k = 0 (draft).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import grpc

from specdec.router.replicas import Replica
from specdec.v1 import common_pb2, draft_pb2, verifier_pb2


class StreamClosed(Exception):
    """The replica ended the stream without an answer."""


class _Stream:
    def __init__(self, replica: Replica, call: grpc.aio.StreamStreamCall, timeout_s: float) -> None:
        self.replica = replica
        self.call = call
        self.timeout_s = timeout_s
        replica.open_streams += 1
        self._closed = False

    async def _ask(self, msg: object) -> Any:
        try:
            await self.call.write(msg)
        except asyncio.InvalidStateError:  # the call already ended: surface its status
            await self._raise_status()
        reply = await asyncio.wait_for(self.call.read(), self.timeout_s)
        if reply is grpc.aio.EOF:
            await self._raise_status()
        self.replica.reported_active = reply.load.active_sequences
        return reply

    async def _raise_status(self) -> None:
        """Raise the status the replica ended the call with (``StreamClosed`` if it was OK)."""
        code = await self.call.code()
        if code != grpc.StatusCode.OK:
            details = await self.call.details()
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
        raise StreamClosed(f"{self.replica.address} closed the stream")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.replica.open_streams -= 1
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError):
            await self.call.done_writing()
        self.call.cancel()


class VerifierStream(_Stream):
    @classmethod
    async def open(
        cls,
        replica: Replica,
        prompt_ids: Sequence[int],
        sampling: common_pb2.SamplingParams,
        seed: int,
        session_id: str,
        request_id: str,
        timeout_s: float,
        metadata: tuple = (),
    ) -> VerifierStream:
        stream = cls(replica, replica.stub.Verify(metadata=metadata), timeout_s)
        await stream.call.write(
            verifier_pb2.VerifyRequest(
                open=verifier_pb2.OpenSequence(
                    prompt_token_ids=prompt_ids,
                    sampling=sampling,
                    seed=seed,
                    session_id=session_id,
                    request_id=request_id,
                )
            )
        )
        return stream

    async def step(
        self,
        position: int,
        draft_token_ids: Sequence[int],
        draft_probs: Sequence[common_pb2.SparseDistribution],
    ) -> verifier_pb2.VerifyResponse:
        msg = verifier_pb2.VerifyRequest(
            step=verifier_pb2.VerifyStep(
                position=position, draft_token_ids=draft_token_ids, draft_probs=draft_probs
            )
        )
        reply = await self._ask(msg)
        assert isinstance(reply, verifier_pb2.VerifyResponse)
        return reply


class DraftStream(_Stream):
    @classmethod
    async def open(
        cls,
        replica: Replica,
        prompt_ids: Sequence[int],
        sampling: common_pb2.SamplingParams,
        seed: int,
        ngram: bool,
        request_id: str,
        timeout_s: float,
        metadata: tuple = (),
    ) -> DraftStream:
        stream = cls(replica, replica.stub.Propose(metadata=metadata), timeout_s)
        method = draft_pb2.PROPOSE_METHOD_NGRAM if ngram else draft_pb2.PROPOSE_METHOD_MODEL
        await stream.call.write(
            draft_pb2.ProposeRequest(
                open=draft_pb2.OpenDraft(
                    prompt_token_ids=prompt_ids,
                    sampling=sampling,
                    seed=seed,
                    method=method,
                    request_id=request_id,
                )
            )
        )
        stream.known = len(prompt_ids)  # committed tokens the draft has been told
        return stream

    known: int

    async def propose(self, committed: Sequence[int], depth: int) -> draft_pb2.ProposeResponse:
        msg = draft_pb2.ProposeRequest(
            step=draft_pb2.ProposeStep(
                position=self.known, token_ids=committed[self.known :], depth=depth
            )
        )
        self.known = len(committed)
        reply = await self._ask(msg)
        assert isinstance(reply, draft_pb2.ProposeResponse)
        return reply
