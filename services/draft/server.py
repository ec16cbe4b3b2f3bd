"""The Draft gRPC servicer: protobuf in, ``DraftCore`` call, protobuf out.

One ``Propose`` stream is one sequence. Answers to steps that ask for drafts go out in order;
proposals drafted ahead go out as soon as they are ready, unasked. When the stream ends for any
reason the sequence's slots are freed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from specdec.core.limits import check_prompt
from specdec.draft.core import DraftCore, Sequence
from specdec.engine.draft_engine import Ahead
from specdec.engine.proposer import Proposal
from specdec.replica.convert import (
    check_token_ids,
    hidden_from_proto,
    sampling_from_proto,
    sparse_to_proto,
)
from specdec.replica.stream import serve_duplex
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc


def _ahead(msg: draft_pb2.AheadSettings) -> Ahead:
    return Ahead(msg.width, msg.depth)


def proposal_to_proto(position: int, context: list[int], proposal: Proposal) -> draft_pb2.Proposal:
    out = draft_pb2.Proposal(
        position=position,
        context_token_ids=context,
        draft_token_ids=proposal.draft_token_ids,
    )
    ids, probs = proposal.draft_sparse_ids, proposal.draft_sparse_probs
    if ids is not None and probs is not None:
        out.draft_probs.extend(sparse_to_proto(ids, probs))
    return out


class _ProposeStream:
    """One sequence on the draft replica, for the life of one stream."""

    def __init__(self, servicer: DraftServicer) -> None:
        self.servicer = servicer
        self.core = servicer.core
        self.seq: Sequence | None = None
        self.outbox: asyncio.Queue[draft_pb2.ProposeResponse] = asyncio.Queue()

    async def open(self, msg: draft_pb2.OpenDraft, span: trace.Span) -> None:
        prompt = list(msg.prompt_token_ids)
        check_prompt(prompt, self.servicer.vocab_size, self.core.max_seq_len)
        params = sampling_from_proto(msg.sampling)
        ngram = msg.method == draft_pb2.PROPOSE_METHOD_NGRAM
        self.seq = self.core.open(prompt, params, msg.seed, ngram, _ahead(msg.ahead), self._send)
        span.set_attributes({"specdec.request_id": msg.request_id, "specdec.ngram": ngram})

    async def step(
        self, msg: draft_pb2.ProposeStep, span: trace.Span
    ) -> draft_pb2.ProposeResponse | None:
        arrived = time.perf_counter_ns()
        seq = self.seq
        assert seq is not None
        tokens = check_token_ids(msg.token_ids, self.servicer.vocab_size, "token_ids")
        hidden = None
        if msg.HasField("hidden_states") and self.core.runner is not None:
            width = self.core.runner.config.hidden_size
            hidden = hidden_from_proto(msg.hidden_states, width, self.core.max_seq_len)
        future = self.core.step(
            seq, msg.position, tokens, msg.depth, msg.verifying, _ahead(msg.ahead), hidden
        )
        if future is None:
            return None
        position = len(seq.committed)
        proposal = await future
        draft_ns = time.perf_counter_ns() - arrived
        span.add_event(
            "step",
            {"position": position, "k": msg.depth, "proposed": len(proposal), "draft_ns": draft_ns},
        )
        return draft_pb2.ProposeResponse(
            proposals=[proposal_to_proto(position, [], proposal)],
            draft_ns=draft_ns,
            load=self.servicer.load(),
        )

    def _send(self, base: int, results: list[tuple[list[int], Proposal]]) -> None:
        """Speculated proposals are ready: send them now."""
        self.outbox.put_nowait(
            draft_pb2.ProposeResponse(
                proposals=[proposal_to_proto(base, ctx, p) for ctx, p in results],
                ahead=True,
                load=self.servicer.load(),
            )
        )

    def close(self) -> None:
        if self.seq is not None:
            self.core.close(self.seq)


class DraftServicer(draft_pb2_grpc.DraftServicer):
    def __init__(self, core: DraftCore, model_name: str, vocab_size: int) -> None:
        self.core = core
        self.model_name = model_name
        self.vocab_size = vocab_size

    def load(self) -> common_pb2.ReplicaLoad:
        runner = self.core.runner
        return common_pb2.ReplicaLoad(
            active_sequences=self.core.active_sequences,
            queued_steps=self.core.queued,
            slots_free=runner.cache.slots_free if runner else 0,
            slots_total=runner.cache.num_slots if runner else 0,
        )

    async def Propose(
        self,
        request_iterator: AsyncIterator[draft_pb2.ProposeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[draft_pb2.ProposeResponse]:
        # grpc.aio needs the method itself to be an async generator.
        stream = _ProposeStream(self)
        async for response in serve_duplex(
            request_iterator, context, stream, stream.outbox, "specdec.propose"
        ):
            yield response

    async def GetStatus(
        self, request: common_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.ReplicaStatus:
        return common_pb2.ReplicaStatus(
            model=self.model_name,
            load=self.load(),
            vocab_size=self.vocab_size,
            max_context_tokens=self.core.max_seq_len,
            slots_in_use=self.core.slots_in_use,
            reads_features=self.core.reads_features,
        )
