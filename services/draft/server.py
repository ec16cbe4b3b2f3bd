"""The Draft gRPC servicer: protobuf in, ``DraftCore`` call, protobuf out.

One ``Propose`` stream is one sequence; when it ends for any reason its slot is freed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from specdec.draft.core import DraftCore, DraftSequence
from specdec.serving.convert import check_token_ids, sampling_from_proto, sparse_to_proto
from specdec.serving.stream import serve_stream
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc


class _ProposeStream:
    """One sequence on the draft replica, for the life of one stream."""

    def __init__(self, servicer: DraftServicer) -> None:
        self.servicer = servicer
        self.core = servicer.core
        self.seq: DraftSequence | None = None

    async def open(self, msg: draft_pb2.OpenDraft, span: trace.Span) -> None:
        prompt = check_token_ids(msg.prompt_token_ids, self.servicer.vocab_size, "prompt")
        params = sampling_from_proto(msg.sampling)
        ngram = msg.method == draft_pb2.PROPOSE_METHOD_NGRAM
        future = self.core.open(prompt, params, msg.seed, ngram)
        try:
            self.seq = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._close_orphan)
            raise
        span.set_attributes({"specdec.request_id": msg.request_id, "specdec.ngram": ngram})

    async def step(self, msg: draft_pb2.ProposeStep, span: trace.Span) -> draft_pb2.ProposeResponse:
        seq = self.seq
        assert seq is not None
        tokens = check_token_ids(msg.token_ids, self.servicer.vocab_size, "token_ids")
        future = self.core.propose(seq, msg.position, tokens, msg.depth)
        timed = await asyncio.wrap_future(future)
        proposal = timed.result
        draft_ns = timed.batch_ns + timed.queue_ns
        span.add_event(
            "step",
            {
                "position": msg.position,
                "k": msg.depth,
                "proposed": len(proposal),
                "draft_ns": draft_ns,
            },
        )
        response = draft_pb2.ProposeResponse(
            position=len(seq.state.committed),
            draft_token_ids=proposal.draft_token_ids,
            draft_ns=draft_ns,
            load=self.servicer.load(),
        )
        ids, probs = proposal.draft_sparse_ids, proposal.draft_sparse_probs
        if ids is not None and probs is not None:
            response.draft_probs.extend(sparse_to_proto(ids, probs))
        return response

    def close(self) -> None:
        if self.seq is not None:
            self.core.close(self.seq)

    def _close_orphan(self, future: concurrent.futures.Future[DraftSequence]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.core.close(future.result())


class DraftServicer(draft_pb2_grpc.DraftServicer):
    def __init__(self, core: DraftCore, model_name: str, vocab_size: int) -> None:
        self.core = core
        self.model_name = model_name
        self.vocab_size = vocab_size

    def load(self) -> common_pb2.ReplicaLoad:
        runner = self.core.runner
        return common_pb2.ReplicaLoad(
            active_sequences=self.core.active_sequences,
            queued_steps=self.core.loop.queued if self.core.loop else 0,
            slots_free=runner.cache.slots_free if runner else 0,
            slots_total=runner.cache.num_slots if runner else 0,
        )

    async def Propose(
        self,
        request_iterator: AsyncIterator[draft_pb2.ProposeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[draft_pb2.ProposeResponse]:
        # grpc.aio needs the method itself to be an async generator.
        async for response in serve_stream(
            request_iterator, context, _ProposeStream(self), "specdec.propose"
        ):
            yield response

    async def GetStatus(
        self, request: common_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ReplicaStatus:
        runner = self.core.runner
        return common_pb2.ReplicaStatus(
            model=self.model_name,
            load=self.load(),
            vocab_size=self.vocab_size,
            max_context_tokens=self.core.max_seq_len,
            slots_in_use=runner.cache.slots_in_use if runner else 0,
        )
