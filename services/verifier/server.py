"""The Verifier gRPC servicer: protobuf in, ``VerifierCore`` call, protobuf out.

One ``Verify`` stream is one sequence: the first message opens it and is answered with the first
token the target decides after the context (and the verdict on any drafts it carried); each
later one verifies drafts at an explicit position. Every answer says where the step's time went
on this side; when the open asked for logprobs, it carries the target's raw logprob (and top
alternatives) of each token it commits; when it asked for hidden states, the target's at the
positions the step cached (what a feature draft reads). When the stream ends for any reason
(done, cancelled, deadline, error) the sequence is closed, so its KV-cache slot is freed or
parked for its session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from specdec.engine.logprobs import TokenLogprob
from specdec.engine.sequence import SequenceState
from specdec.replica.convert import (
    check_token_ids,
    hidden_to_proto,
    proposal_from_proto,
    sampling_from_proto,
)
from specdec.replica.stream import serve_stream
from specdec.v1 import common_pb2, verifier_pb2, verifier_pb2_grpc
from specdec.verifier.core import VerifierCore


class _VerifyStream:
    """One sequence on the verifier, for the life of one stream."""

    def __init__(self, servicer: VerifierServicer) -> None:
        self.servicer = servicer
        self.core = servicer.core
        self.seq: SequenceState | None = None
        self.session_id = ""
        self.cached_prompt_tokens = 0

    async def open(
        self, msg: verifier_pb2.OpenSequence, span: trace.Span
    ) -> verifier_pb2.VerifyResponse:
        arrived = time.perf_counter_ns()
        prompt = check_token_ids(msg.prompt_token_ids, self.core.runner.vocab_size, "prompt")
        params = sampling_from_proto(msg.sampling)
        logprobs = msg.logprobs if msg.HasField("logprobs") else None
        future = self.core.open(
            prompt, params, msg.seed, msg.session_id, logprobs, msg.hidden_states
        )
        try:
            self.seq, self.cached_prompt_tokens = await asyncio.shield(future)
        except asyncio.CancelledError:  # the stream went away while the slot was being taken
            future.add_done_callback(self._close_orphan)
            raise
        self.session_id = msg.session_id
        span.set_attributes(
            {
                "specdec.prompt_tokens": len(prompt),
                "specdec.cached_prompt_tokens": self.cached_prompt_tokens,
                "specdec.request_id": msg.request_id,
            }
        )
        step = msg.step if msg.HasField("step") else verifier_pb2.VerifyStep(position=len(prompt))
        return await self._verify(step, span, arrived)

    async def step(
        self, msg: verifier_pb2.VerifyStep, span: trace.Span
    ) -> verifier_pb2.VerifyResponse:
        return await self._verify(msg, span, time.perf_counter_ns())

    async def _verify(
        self, msg: verifier_pb2.VerifyStep, span: trace.Span, arrived: int
    ) -> verifier_pb2.VerifyResponse:
        seq = self.seq
        assert seq is not None
        proposal = proposal_from_proto(
            msg.draft_token_ids, msg.draft_probs, seq.params, self.core.runner.vocab_size
        )
        position = len(seq.committed)
        timed = await self.core.verify(seq, msg.position, proposal)
        result = timed.result
        span.add_event(
            "step",
            {
                "position": position,
                "k": len(proposal),
                "accepted": result.num_accepted,
                "forward_ns": timed.batch_ns,
                "queue_ns": timed.queue_ns,
                "batch_size": timed.batch_size,
            },
        )
        hidden = None
        if result.features is not None:
            hidden = hidden_to_proto(result.features, len(seq.cached))
        return verifier_pb2.VerifyResponse(
            position=position,
            num_accepted=result.num_accepted,
            next_token_id=result.next_token_id,
            committed_len=len(seq.committed),
            cached_prompt_tokens=self.cached_prompt_tokens,
            forward_ns=timed.batch_ns,
            queue_ns=timed.queue_ns,
            load=self.servicer.load(),
            batch_size=timed.batch_size,
            service_ns=time.perf_counter_ns() - arrived,
            logprobs=[_logprob_to_proto(t) for t in result.logprobs],
            hidden_states=hidden,
        )

    def close(self) -> None:
        if self.seq is not None:
            self.core.close(self.seq, self.session_id)

    def _close_orphan(self, future: asyncio.Future[tuple[SequenceState, int]]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.core.close(future.result()[0], "")


def _logprob_to_proto(found: TokenLogprob) -> common_pb2.TokenLogprob:
    top = [common_pb2.TopLogprob(token_id=t, logprob=lp) for t, lp in found.top]
    return common_pb2.TokenLogprob(token_id=found.token_id, logprob=found.logprob, top=top)


class VerifierServicer(verifier_pb2_grpc.VerifierServicer):
    def __init__(self, core: VerifierCore, model_name: str) -> None:
        self.core = core
        self.model_name = model_name

    def load(self) -> common_pb2.ReplicaLoad:
        return common_pb2.ReplicaLoad(
            active_sequences=self.core.counters.active_sequences,
            queued_steps=self.core.queued,
            slots_free=self.core.slots_free,
            slots_total=self.core.runner.cache.num_slots,
        )

    async def Verify(
        self,
        request_iterator: AsyncIterator[verifier_pb2.VerifyRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[verifier_pb2.VerifyResponse]:
        # grpc.aio needs the method itself to be an async generator.
        async for response in serve_stream(
            request_iterator, context, _VerifyStream(self), "specdec.verify"
        ):
            yield response

    async def GetStatus(
        self, request: common_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ReplicaStatus:
        c = self.core.counters
        return common_pb2.ReplicaStatus(
            model=self.model_name,
            load=self.load(),
            vocab_size=self.core.runner.vocab_size,
            max_context_tokens=self.core.runner.max_seq_len,
            prefill_tokens_total=c.prefill_tokens_total,
            reused_prefix_tokens_total=c.reused_prefix_tokens_total,
            parked_sessions=self.core.parked_sessions,
            slots_in_use=self.core.slots_in_use,
        )
