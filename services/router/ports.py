"""The speculation loop's two ports over the internal gRPC streams, with failover and fallback.

``StreamVerifier`` holds one ``Verify`` stream. Opening it sends the context (the verifier
answers with the first token); each step sends a proposal by position. When the replica fails,
the sequence is re-opened on another one with the whole committed sequence and the same round's
drafts, so the verdict, and the output, do not change (randomness is keyed by position).

``StreamDrafter`` holds one ``Propose`` stream and the request's speculation cache. A reader
task files every proposal the draft sends (answers and proposals drafted ahead alike) in the
cache by the exact state it continues; ``propose`` takes the one for the committed sequence when
it is already there (a hit: no round trip) and asks for it otherwise. For a feature draft the
verifier's verdicts carry the target's hidden states, which go to the draft with the next step.
A draft that fails or is too slow is dropped for the rest of the request: the loop goes on at
k = 0, same output.
Non-goals: choosing k (the depth policy), the public API (``speculation.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from specdec.core.errors import OutOfSlots, Unavailable
from specdec.core.rounds import AHEAD_HIT, AHEAD_MISS, NO_PROPOSAL, Proposal, Verdict
from specdec.core.spec_cache import SpeculationCache
from specdec.router.replicas import RETRY_AFTER_S, Replica, ReplicaPool
from specdec.serving.errors import retry_after_s
from specdec.v1 import common_pb2, draft_pb2, verifier_pb2

log = logging.getLogger("specdec.router")

VERIFIER_RETRIES = 2  # other replicas tried after the first fails, per request
# Statuses a replica that died or is dying ends its calls with (a server stopped mid-write can
# end them with INTERNAL: "Internal error from Core"). INVALID_ARGUMENT is not among them: the
# replica refused the message itself, and another would too.
_FAILOVER_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
}


class StreamClosed(Exception):
    """The replica ended the stream without an answer."""


async def _status_error(call: Any, address: str) -> Exception:
    """The error a finished call ended with (``StreamClosed`` if it ended OK)."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        details = await call.details()
        trailing = await call.trailing_metadata()  # keeps a RetryInfo detail, if any
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)
    return StreamClosed(f"{address} closed the stream")


async def _end(call: Any) -> None:
    """Close our side of a stream and cancel it, even when the close is cancelled itself (the
    replica frees the sequence's slot when its stream ends); a stream that already failed may
    refuse the close in several ways (grpc's ``ExecuteBatchError`` among them), none of which
    matters."""
    try:
        with contextlib.suppress(Exception):
            await call.done_writing()
    finally:
        call.cancel()


def _verdict(reply: verifier_pb2.VerifyResponse) -> Verdict:
    return Verdict(
        num_accepted=reply.num_accepted,
        next_token_id=reply.next_token_id,
        forward_ns=reply.forward_ns,
        queue_ns=reply.queue_ns,
        service_ns=reply.service_ns,
        batch_size=reply.batch_size,
        verifier_active=reply.load.active_sequences,
        verifier_queue=reply.load.queued_steps,
        cached_prompt_tokens=reply.cached_prompt_tokens,
        logprobs=reply.logprobs,
        features=reply.hidden_states if reply.HasField("hidden_states") else None,
    )


def merge_hidden(
    old: common_pb2.HiddenStates | None, new: common_pb2.HiddenStates
) -> common_pb2.HiddenStates:
    """Hidden states not passed on yet, then ``new``: one message. ``new`` replaces the rows
    from its start on (a verifier re-opened elsewhere sends the whole context again); after a
    gap only ``new`` is kept (the draft reads zeros where rows are missing)."""
    if old is None or not old.count or new.width != old.width:
        return new
    end = old.start + old.count
    if new.start < old.start or new.start > end:
        return new
    keep = new.start - old.start  # rows of ``old`` before ``new`` begins
    row = 2 * old.width  # bytes per bf16 row
    return common_pb2.HiddenStates(
        start=old.start,
        count=keep + new.count,
        width=old.width,
        data=old.data[: keep * row] + new.data,
    )


def _step(position: int, proposal: Proposal) -> verifier_pb2.VerifyStep:
    return verifier_pb2.VerifyStep(
        position=position, draft_token_ids=proposal.token_ids, draft_probs=proposal.probs or ()
    )


class _Later(Awaitable[Verdict]):
    """Awaiting it reads the verdict; left alone (the caller stopped early), it does nothing."""

    def __init__(
        self, read: Callable[[Sequence[int], Proposal], Awaitable[Verdict]], *args: Any
    ) -> None:
        self.read, self.args = read, args

    def __await__(self):  # type: ignore[no-untyped-def]
        return self.read(*self.args).__await__()


def _head(proposal: Proposal, k: int, ahead: str) -> Proposal:
    """The first ``k`` drafts (and their distributions), marked with where they came from."""
    probs = proposal.probs[:k] if proposal.probs else None
    return Proposal(proposal.token_ids[:k], probs, ahead)


class StreamVerifier:
    """The verifier port: one Verify stream, moved to another replica when its replica fails."""

    def __init__(
        self,
        pool: ReplicaPool,
        preferred: str | None,
        sampling: common_pb2.SamplingParams,
        seed: int,
        session_id: str,
        request_id: str,
        timeout_s: float,
        metadata: tuple,
        logprobs: int | None = None,
        hidden_states: bool = False,
    ) -> None:
        self.pool, self.preferred = pool, preferred
        self.sampling, self.seed = sampling, seed
        self.logprobs = logprobs  # alternatives per token's logprob; None: no logprobs
        self.hidden_states = hidden_states  # verdicts carry them (for a feature draft)
        self.session_id, self.request_id = session_id, request_id
        self.timeout_s, self.metadata = timeout_s, metadata
        self.replica: Replica | None = None
        self._call: Any = None
        self._broken = False  # a write failed: the call's status decides what happens
        self._tried: set[str] = set()

    async def open(self, context: Sequence[int]) -> Awaitable[Verdict]:
        await self._open(context, NO_PROPOSAL)
        return _Later(self._verdict, context, NO_PROPOSAL)

    async def verify(self, committed: Sequence[int], proposal: Proposal) -> Awaitable[Verdict]:
        try:
            await self._call.write(verifier_pb2.VerifyRequest(step=_step(len(committed), proposal)))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            self._broken = True  # the call has ended: its status says why
        return _Later(self._verdict, committed, proposal)

    async def close(self) -> None:
        if self._call is not None:
            self._release()
            await _end(self._call)
            self._call = None

    async def _open(self, committed: Sequence[int], proposal: Proposal) -> None:
        """Open the sequence on a replica not tried yet (the preferred one first), with
        ``proposal`` verified right after the prefill."""
        replica = self.pool.pick(self.preferred, self._tried)
        self.preferred = None
        self._tried.add(replica.address)
        self.replica = replica
        replica.open_streams += 1
        self._call = replica.stub.Verify(metadata=self.metadata)
        self._broken = False
        open_msg = verifier_pb2.OpenSequence(
            prompt_token_ids=committed,
            sampling=self.sampling,
            seed=self.seed,
            session_id=self.session_id,
            request_id=self.request_id,
            logprobs=self.logprobs,
            hidden_states=self.hidden_states,
        )
        if len(proposal):
            open_msg.step.CopyFrom(_step(len(committed), proposal))
        try:
            await self._call.write(verifier_pb2.VerifyRequest(open=open_msg))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            self._broken = True

    async def _verdict(self, committed: Sequence[int], proposal: Proposal) -> Verdict:
        """Read the verdict; when the replica fails, re-open elsewhere and read that one."""
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    reply = grpc.aio.EOF if self._broken else await self._call.read()
                    if reply is grpc.aio.EOF:
                        raise await _status_error(self._call, self.replica.address)
            except (
                grpc.aio.AioRpcError,
                asyncio.InvalidStateError,
                StreamClosed,
                TimeoutError,
            ) as exc:
                await self._fail_over(committed, proposal, exc)
                continue
            self.replica.reported_active = reply.load.active_sequences
            return _verdict(reply)

    async def _fail_over(
        self, committed: Sequence[int], proposal: Proposal, exc: BaseException
    ) -> None:
        code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
        if code is not None and code not in _FAILOVER_CODES | {grpc.StatusCode.RESOURCE_EXHAUSTED}:
            raise exc  # the replica refused the message itself: retrying elsewhere would too
        assert self.replica is not None
        full = code == grpc.StatusCode.RESOURCE_EXHAUSTED
        if not full:
            log.warning("verifier %s failed (%s); re-opening elsewhere", self.replica.address, exc)
            self.pool.mark_down(self.replica)
        await self.close()
        try:
            if len(self._tried) > VERIFIER_RETRIES:
                raise Unavailable(
                    f"verifiers failed {len(self._tried)} times for this request",
                    retry_after_s=RETRY_AFTER_S,
                )
            await self._open(committed, proposal)
        except Unavailable:
            if full:  # every replica tried is full: the client should retry later
                raise OutOfSlots(
                    exc.details() or "verifier out of slots",  # type: ignore[union-attr]
                    retry_after_s=retry_after_s(exc) or RETRY_AFTER_S,  # type: ignore[arg-type]
                ) from None
            raise

    def _release(self) -> None:
        if self.replica is not None:
            self.replica.open_streams -= 1


class StreamDrafter:
    """The drafter port: one Propose stream to a draft replica and the speculation cache."""

    def __init__(
        self,
        pool: ReplicaPool,
        preferred: str | None,
        open_msg: draft_pb2.OpenDraft,
        timeout_s: float,
        metadata: tuple,
        ahead_now: Callable[[], bool] = lambda: True,
    ) -> None:
        self.pool, self.preferred = pool, preferred
        self.open_msg = open_msg  # prompt set at start()
        self.timeout_s, self.metadata = timeout_s, metadata
        self.width = open_msg.ahead.width  # outcomes drafted ahead; 0: draft-ahead off
        self.ahead_now = ahead_now  # asked before every step: False pauses draft-ahead (load)
        self._asked_ahead = False  # the last step asked the draft to work ahead
        self.cache = SpeculationCache()
        self.replica: Replica | None = None
        self.fell_back = False  # the draft failed mid-request
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._known = 0  # committed tokens the draft has been told
        self._depth = open_msg.ahead.depth  # the last k asked: the depth to draft ahead at
        self._want: tuple[Sequence[int], asyncio.Future[Proposal]] | None = None
        self._dead = False  # the stream failed: no more drafting for this request
        self._hidden: common_pb2.HiddenStates | None = None  # not passed on to the draft yet

    @property
    def available(self) -> bool:
        return self._call is not None and not self._dead

    async def start(self, context: Sequence[int]) -> None:
        try:
            self.replica = self.pool.pick(self.preferred)
            self._call = self.replica.stub.Propose(metadata=self.metadata)
            self.replica.open_streams += 1
            self.open_msg.prompt_token_ids[:] = context
            self.open_msg.ahead.width = self._width_now()
            await self._call.write(draft_pb2.ProposeRequest(open=self.open_msg))
        except Exception as exc:
            await self._fail(exc)
            return
        self._known = len(context)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def propose(self, committed: Sequence[int], k: int) -> Proposal:
        self._depth = k
        if not self.available:
            return NO_PROPOSAL
        asked_ahead = self._asked_ahead
        if asked_ahead:
            hit = self.cache.take(committed)
            if hit is not None and len(hit):
                return _head(hit, k, AHEAD_HIT)
        future: asyncio.Future[Proposal] = asyncio.get_running_loop().create_future()
        self._want = (committed, future)
        try:
            await self._send(committed, depth=k)
            async with asyncio.timeout(self.timeout_s):
                proposal = await future
        except Exception as exc:
            await self._fail(exc)
            return NO_PROPOSAL
        finally:
            self._want = None
        return _head(proposal, k, AHEAD_MISS if asked_ahead else "")

    def observe(self, verdict: Verdict) -> None:
        if verdict.features is not None:  # passed on with the next step
            self._hidden = merge_hidden(self._hidden, verdict.features)

    async def verifying(self, committed: Sequence[int], proposal: Proposal) -> None:
        if proposal.ahead == AHEAD_HIT and self.available:
            try:  # the draft learns which of its proposals is being verified
                await self._send(committed, verifying=len(proposal))
            except Exception as exc:
                await self._fail(exc)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._call is not None:
            call, self._call = self._call, None
            if self.replica is not None:
                self.replica.open_streams -= 1
            await _end(call)

    def _width_now(self) -> int:
        width = self.width if self.width and self.ahead_now() else 0
        self._asked_ahead = width > 0
        return width

    async def _send(self, committed: Sequence[int], depth: int = 0, verifying: int = 0) -> None:
        step = draft_pb2.ProposeStep(
            position=self._known,
            token_ids=committed[self._known :],
            depth=depth,
            verifying=verifying,
            ahead=draft_pb2.AheadSettings(width=self._width_now(), depth=self._depth),
            hidden_states=self._hidden,
        )
        self._known, self._hidden = len(committed), None
        await self._call.write(draft_pb2.ProposeRequest(step=step))

    async def _read(self) -> None:
        """File every proposal the draft sends; hand the awaited one over."""
        call = self._call
        try:
            while (msg := await call.read()) is not grpc.aio.EOF:
                for p in msg.proposals:
                    probs = list(p.draft_probs) if len(p.draft_probs) else None
                    self.cache.put(
                        p.position, p.context_token_ids, Proposal(p.draft_token_ids, probs)
                    )
                if self._want is not None:
                    committed, future = self._want
                    found = self.cache.take(committed)
                    if found is not None and not future.done():
                        future.set_result(found)
            raise StreamClosed("the draft closed the stream")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._dead = True
            self._fell_back(exc)
            if self._want is not None and not self._want[1].done():
                self._want[1].set_exception(exc)

    async def _fail(self, exc: BaseException) -> None:
        """Drop the draft for the rest of the request: k = 0 from here on, same output."""
        self._fell_back(exc)
        await self.close()

    def _fell_back(self, exc: BaseException) -> None:
        if self.fell_back:
            return
        if self.replica is None:
            log.warning("no draft for this request (%s); continuing at k=0", exc)
        else:
            log.warning("draft %s failed (%r); continuing at k=0", self.replica.address, exc)
            self.pool.mark_down(self.replica)
        self.fell_back = True
