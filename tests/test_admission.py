"""Admission: requests beyond the verifiers' slots wait their turn in the router's queue.

The ``unit`` tests drive ``Admission`` itself on a real ``ReplicaPool`` whose channels are never
dialled (slots set by hand), under ``asyncio.run``. The ``service`` tests run the real pipeline
on loopback with a verifier of 2 slots; "another router" holding verifier slots is played by raw
``Verify`` streams opened straight on the verifier.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from specdec.core.errors import OutOfSlots
from specdec.local_pipeline import Pipeline
from specdec.router.admission import (
    MAX_RETRY_S,
    MIN_RETRY_S,
    Admission,
    Ticket,
    retry_after_s,
)
from specdec.router.replicas import ReplicaPool
from specdec.serving.auth import hash_key
from specdec.serving.errors import retry_after_s as status_retry_after_s
from specdec.v1 import common_pb2, generation_pb2, verifier_pb2, verifier_pb2_grpc

unit = pytest.mark.unit
service = pytest.mark.service

PROMPTS = [f"def f{i}(x):\n    return x + {i}\n" for i in range(8)]


# --- unit: the queue and its math --------------------------------------------------------------


def admission(slots: dict[str, int], **kw: object) -> Admission:
    pool = ReplicaPool("verifier", verifier_pb2_grpc.VerifierStub)
    pool.set_addresses(list(slots))
    adm = Admission(pool, **kw)  # type: ignore[arg-type]
    for address, n in slots.items():
        adm.set_slots(address, n)
    return adm


@unit
def test_retry_hint_is_the_expected_wait_for_a_slot() -> None:
    assert retry_after_s(ahead=0, capacity=4, hold_s=2.0) == pytest.approx(0.5)
    assert retry_after_s(ahead=7, capacity=4, hold_s=2.0) == pytest.approx(4.0)
    assert retry_after_s(ahead=0, capacity=100, hold_s=0.001) == MIN_RETRY_S
    assert retry_after_s(ahead=10**6, capacity=1, hold_s=10.0) == MAX_RETRY_S
    assert retry_after_s(ahead=0, capacity=0, hold_s=1.0) == MAX_RETRY_S


@unit
def test_capacity_is_the_slots_of_the_verifiers_up_and_known() -> None:
    async def scenario() -> None:
        adm = admission({"a:1": 2, "b:1": 3})
        assert adm.capacity() == 5
        adm.verifiers.mark_down(adm.verifiers.replicas["b:1"])
        assert adm.capacity() == 2
        adm.set_slots("a:1", None)  # it stopped answering GetStatus
        assert adm.capacity() is None  # nothing known: nothing waits
        tickets = [await adm.admit("") for _ in range(10)]
        assert adm.admitted == 10 and adm.waiting == 0
        for t in tickets:
            adm.release(t)
        assert adm.admitted == 0

    asyncio.run(scenario())


@unit
def test_turns_are_fifo_per_identity_and_round_robin_across_identities() -> None:
    async def scenario() -> list[str]:
        adm = admission({"v:1": 1})
        first = await adm.admit("A")
        order: list[str] = []

        async def one(identity: str, name: str) -> None:
            ticket = await adm.admit(identity)
            order.append(name)
            await asyncio.sleep(0.01)
            adm.release(ticket)

        tasks = []
        for name in ("a1", "a2", "a3"):  # A floods...
            tasks.append(asyncio.create_task(one("A", name)))
            await asyncio.sleep(0)
        tasks.append(asyncio.create_task(one("B", "b1")))  # ...then B asks once
        await asyncio.sleep(0)
        assert adm.waiting == 4 and adm.admitted == 1
        adm.release(first)
        await asyncio.gather(*tasks)
        assert adm.waiting == 0 and adm.admitted == 0
        return order

    assert asyncio.run(scenario()) == ["a1", "b1", "a2", "a3"]


@unit
def test_full_queue_and_timeout_refuse_with_a_retry_hint() -> None:
    async def scenario() -> None:
        adm = admission({"v:1": 1}, max_waiting=1, timeout_s=0.2)
        held = await adm.admit("")
        waiter = asyncio.create_task(adm.admit(""))
        await asyncio.sleep(0)
        with pytest.raises(OutOfSlots, match="already waiting") as full:
            await adm.admit("")
        assert full.value.retry_after_s is not None and full.value.retry_after_s > 0
        started = time.monotonic()
        with pytest.raises(OutOfSlots, match=r"no slot came free in 0\.2 s") as late:
            await waiter
        assert 0.15 < time.monotonic() - started < 1.0
        assert late.value.retry_after_s is not None
        assert adm.waiting == 0 and adm.admitted == 1
        adm.release(held)
        adm.release(held)  # twice is once
        assert adm.admitted == 0

    asyncio.run(scenario())


@unit
def test_a_cancelled_request_leaves_the_queue() -> None:
    async def scenario() -> None:
        adm = admission({"v:1": 1})
        held = await adm.admit("")
        gone = asyncio.create_task(adm.admit("A"))
        stays = asyncio.create_task(adm.admit("B"))
        await asyncio.sleep(0)
        assert adm.waiting == 2
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert adm.waiting == 1
        adm.release(held)
        ticket = await stays  # the slot went to the one still waiting
        assert adm.admitted == 1 and adm.waiting == 0 and ticket.queued_ns > 0

    asyncio.run(scenario())


@unit
def test_a_full_verifier_sends_an_admitted_request_back_to_wait_until_its_deadline() -> None:
    async def scenario() -> None:
        adm = admission({"v:1": 2}, timeout_s=5.0)
        ticket, other = await adm.admit(""), await adm.admit("")
        started = time.monotonic()
        waiting = asyncio.create_task(adm.wait_for_slot(ticket))
        await asyncio.sleep(0)
        adm.release(other)  # a release ends the wait at once
        await waiting
        assert time.monotonic() - started < 0.04
        await adm.wait_for_slot(ticket)  # no release: a short back-off
        expired = Ticket("", deadline=time.monotonic() - 1)
        with pytest.raises(OutOfSlots, match="no verifier slot came free"):
            await adm.wait_for_slot(expired)

    asyncio.run(scenario())


# --- service: the real pipeline ----------------------------------------------------------------


def run(stub, request: generation_pb2.GenerateRequest, metadata=None):
    tokens: list[int] = []
    last = None
    for response in stub.Generate(request, metadata=metadata):
        tokens.extend(response.token_ids)
        last = response
    return tokens, last.stats


def greedy(prompt: str, max_tokens: int = 24) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(prompt_text=prompt, max_tokens=max_tokens)


@pytest.fixture
def pipeline(model_dir: Path) -> Iterator[Pipeline]:
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close"), slots=2).start()
    try:
        yield p
    finally:
        p.close()


@contextmanager
def verifier_slots_held(p: Pipeline, n: int) -> Iterator[None]:
    """``n`` raw Verify streams holding verifier slots (as another router's requests would)."""
    release = threading.Event()
    channel = grpc.insecure_channel(p.address("verifier"))
    stub = verifier_pb2_grpc.VerifierStub(channel)

    def messages(i: int) -> Iterator[verifier_pb2.VerifyRequest]:
        yield verifier_pb2.VerifyRequest(
            open=verifier_pb2.OpenSequence(
                prompt_token_ids=[1, 2, 3 + i], sampling=common_pb2.SamplingParams(), seed=1
            )
        )
        release.wait(30)

    calls = [stub.Verify(messages(i)) for i in range(n)]
    for call in calls:
        next(call)  # opened: the slot is held
    try:
        yield
    finally:
        release.set()
        for call in calls:
            list(call)
        channel.close()


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@service
def test_eight_requests_on_two_slots_all_succeed_with_the_sequential_outputs(pipeline) -> None:
    stub = pipeline.client()
    sequential = [run(stub, greedy(p))[0] for p in PROMPTS]
    waits_before = REGISTRY.get_sample_value("specdec_request_queue_time_seconds_count") or 0
    barrier = threading.Barrier(len(PROMPTS))

    def one(prompt: str):
        barrier.wait()
        return run(stub, greedy(prompt))

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(one, PROMPTS))
    assert [tokens for tokens, _ in results] == sequential
    queued = [stats.queue_ns for _, stats in results]
    assert sum(q > 0 for q in queued) >= len(PROMPTS) - 2, queued  # beyond 2 slots: waited
    assert all(stats.time_to_first_token_ns >= stats.queue_ns for _, stats in results)
    assert pipeline.wait_idle() == 0
    adm = pipeline.router_deps.admission
    assert adm.admitted == 0 and adm.waiting == 0
    # The metrics: every request's wait observed, nobody waiting now.
    waits = REGISTRY.get_sample_value("specdec_request_queue_time_seconds_count")
    assert waits == waits_before + len(PROMPTS)
    assert REGISTRY.get_sample_value("specdec_num_requests_waiting") == 0


@service
def test_full_queue_and_queue_timeout_are_resource_exhausted_with_retry_info(pipeline) -> None:
    pipeline.add_router(queue_max=1, queue_timeout_s=1.0)
    adm = pipeline.router_deps.admission
    stub = pipeline.client()
    with ThreadPoolExecutor(3) as pool, verifier_slots_held(pipeline, 2):

        def outcome(prompt: str) -> tuple[str, str]:
            try:
                run(stub, greedy(prompt))
                return "OK", ""
            except grpc.RpcError as err:
                return err.code().name, err.details()

        admitted = [pool.submit(outcome, PROMPTS[i]) for i in range(2)]
        wait_for(lambda: adm.admitted == 2)  # admitted; the verifier is full: they wait
        queued = pool.submit(outcome, PROMPTS[2])
        wait_for(lambda: adm.waiting == 1)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as full:
            run(stub, greedy(PROMPTS[3]))
        assert time.monotonic() - started < 0.5  # refused at once, not after a wait
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "waiting" in full.value.details()
        hint = status_retry_after_s(full.value)
        assert hint is not None and MIN_RETRY_S <= hint <= MAX_RETRY_S
        # Admitted but never given a verifier slot within the queue timeout: refused; then the
        # queued one gets its turn, and the same (``test_full_queue_and_timeout_...`` above has
        # the queue's own timeout).
        assert [f.result(timeout=10)[0] for f in admitted] == ["RESOURCE_EXHAUSTED"] * 2
        code, details = queued.result(timeout=10)
        assert code == "RESOURCE_EXHAUSTED" and "came free in 1 s" in details
    assert adm.admitted == 0 and adm.waiting == 0
    assert run(stub, greedy(PROMPTS[0]))[0]  # the slots are back: served
    assert pipeline.wait_idle() == 0


@service
def test_an_admitted_request_waits_for_a_slot_another_router_holds(pipeline) -> None:
    stub = pipeline.client()
    expected = run(stub, greedy(PROMPTS[0]))[0]
    adm = pipeline.router_deps.admission
    with ThreadPoolExecutor(1) as pool:
        with verifier_slots_held(pipeline, 2):
            pending = pool.submit(run, stub, greedy(PROMPTS[0]))
            wait_for(lambda: adm.admitted == 1)
            time.sleep(0.3)  # it keeps asking the full verifier meanwhile
            assert not pending.done()
        tokens, _ = pending.result(timeout=10)
    assert tokens == expected
    assert pipeline.wait_idle() == 0


@service
def test_one_identity_flooding_does_not_starve_another(pipeline, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"alice:{hash_key('key-a')}\nbob:{hash_key('key-b')}\n")
    pipeline.add_router(api_keys_file=str(keys))
    adm = pipeline.router_deps.admission
    stub = pipeline.client()
    alice = (("authorization", "Bearer key-a"),)
    bob = (("authorization", "Bearer key-b"),)

    def timed(prompt: str, metadata) -> float:
        """When the request got its slot (monotonic seconds)."""
        sent = time.monotonic()
        _, stats = run(stub, greedy(prompt, 16), metadata)
        return sent + stats.queue_ns / 1e9

    with ThreadPoolExecutor(7) as pool:
        with verifier_slots_held(pipeline, 2):  # nothing finishes until all have arrived
            floods = []
            for i in range(6):
                floods.append(pool.submit(timed, PROMPTS[i], alice))
                wait_for(lambda i=i: adm.admitted + adm.waiting == i + 1)
            bobs = pool.submit(timed, PROMPTS[6], bob)
            wait_for(lambda: adm.waiting == 5)
        granted_bob = bobs.result(timeout=30)
        granted_alice = [f.result(timeout=30) for f in floods]
    # Round-robin: after the two admitted at once, alice's next one, then bob's.
    assert sum(t > granted_bob for t in granted_alice) >= 3, (granted_bob, granted_alice)
