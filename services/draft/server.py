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
from specdec.engine.errors import InvalidRequest
from specdec.serving.convert import check_token_ids, sampling_from_proto, sparse_to_proto
from specdec.serving.errors import abort_with
from specdec.serving.telemetry import extract_context
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc


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
        seq: DraftSequence | None = None
        span = trace.get_tracer("specdec.draft").start_span(
            "specdec.propose",
            context=extract_context(context.invocation_metadata()),
            kind=trace.SpanKind.SERVER,
        )
        try:
            async for msg in request_iterator:
                if msg.HasField("open"):
                    if seq is not None:
                        raise InvalidRequest("open", "the stream already opened a sequence")
                    seq = await self._open(msg.open)
                    span.set_attributes(
                        {"specdec.request_id": msg.open.request_id, "specdec.ngram": seq.ngram}
                    )
                    continue
                if seq is None:
                    raise InvalidRequest("open", "the first message of a stream must open it")
                step = msg.step
                tokens = check_token_ids(step.token_ids, self.vocab_size, "token_ids")
                future = self.core.propose(seq, step.position, tokens, step.depth)
                timed = await asyncio.wrap_future(future)
                proposal = timed.result
                span.add_event(
                    "step",
                    {
                        "position": step.position,
                        "k": step.depth,
                        "proposed": len(proposal),
                        "draft_ns": timed.batch_ns + timed.queue_ns,
                    },
                )
                response = draft_pb2.ProposeResponse(
                    position=len(seq.state.committed),
                    draft_token_ids=proposal.draft_token_ids,
                    draft_ns=timed.batch_ns + timed.queue_ns,
                    load=self.load(),
                )
                ids, probs = proposal.draft_sparse_ids, proposal.draft_sparse_probs
                if ids is not None and probs is not None:
                    response.draft_probs.extend(sparse_to_proto(ids, probs))
                yield response
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            span.record_exception(exc)
            await abort_with(context, exc, "Propose")
        finally:
            span.end()
            if seq is not None:
                self.core.close(seq)

    async def _open(self, msg: draft_pb2.OpenDraft) -> DraftSequence:
        prompt = check_token_ids(msg.prompt_token_ids, self.vocab_size, "prompt")
        params = sampling_from_proto(msg.sampling)
        ngram = msg.method == draft_pb2.PROPOSE_METHOD_NGRAM
        future = self.core.open(prompt, params, msg.seed, ngram)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._close_orphan)
            raise

    def _close_orphan(self, future: concurrent.futures.Future[DraftSequence]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.core.close(future.result())

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
