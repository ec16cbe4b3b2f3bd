"""The edges of every service: malformed bytes, invalid UTF-8, oversized prompts, the limits
``GetInfo`` advertises. Each gets a clear status, and nothing else is held up meanwhile."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from specdec.local_pipeline import Pipeline
from specdec.router.request import PROMPT_BYTES_PER_TOKEN
from specdec.v1 import draft_pb2, generation_pb2, generation_pb2_grpc, verifier_pb2

pytestmark = pytest.mark.service

CONTEXT = 256
MARK = "ZQZQ"  # a string field's value, replaced by invalid UTF-8 in the serialized bytes
NOT_UTF8 = b"\xff\xfe\xc3\x28"

# (role, method, request/response streaming, a message with a string field set to MARK)
RPCS = [
    (
        "router",
        "/specdec.v1.Generation/Generate",
        (False, True),
        generation_pb2.GenerateRequest(prompt_text=MARK, max_tokens=4),
    ),
    (
        "router",
        "/specdec.v1.Generation/Generate",
        (False, True),
        generation_pb2.GenerateRequest(prompt_text="hi", stop=[MARK], max_tokens=4),
    ),
    ("router", "/specdec.v1.Generation/GetInfo", (False, False), None),
    (
        "verifier",
        "/specdec.v1.Verifier/Verify",
        (True, True),
        verifier_pb2.VerifyRequest(
            open=verifier_pb2.OpenSequence(prompt_token_ids=[1, 2], session_id=MARK)
        ),
    ),
    ("verifier", "/specdec.v1.Verifier/GetStatus", (False, False), None),
    (
        "draft",
        "/specdec.v1.Draft/Propose",
        (True, True),
        draft_pb2.ProposeRequest(open=draft_pb2.OpenDraft(prompt_token_ids=[1], request_id=MARK)),
    ),
    ("draft", "/specdec.v1.Draft/GetStatus", (False, False), None),
]
MESSAGE_NAMES = {
    "Generate": "GenerateRequest",
    "GetInfo": "GetInfoRequest",
    "Verify": "VerifyRequest",
    "Propose": "ProposeRequest",
    "GetStatus": "GetStatusRequest",
}


@pytest.fixture(scope="module")
def pipeline(model_dir: Path):
    p = Pipeline(
        str(model_dir / "target"), str(model_dir / "draft_close"), max_context_tokens=CONTEXT
    ).start()
    yield p
    p.close()


def call_raw(p: Pipeline, role: str, method: str, streaming: tuple[bool, bool], data: bytes):
    """Send ``data`` as the request bytes of ``method``, as any client could."""
    channel = grpc.insecure_channel(p.address(role))
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[streaming]
    call = kind(method)  # no serializers: the bytes go as they are
    request = iter([data]) if streaming[0] else data
    answer = call(request, timeout=10)
    return list(answer) if streaming[1] else answer


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05\x08\x96", b"\x08\x80\x80\x80"])
@pytest.mark.parametrize(("role", "method", "streaming", "_msg"), RPCS)
def test_malformed_bytes_are_invalid_argument_naming_the_message(
    pipeline, role, method, streaming, _msg, data, caplog
):
    with pytest.raises(grpc.RpcError) as err:
        call_raw(pipeline, role, method, streaming, data)
    name = MESSAGE_NAMES[method.rsplit("/", 1)[1]]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(f"{name}: malformed protobuf")
    assert "Error" not in err.value.details() and "<class" not in err.value.details()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


@pytest.mark.parametrize(("role", "method", "streaming", "msg"), [r for r in RPCS if r[3]])
def test_invalid_utf8_in_a_string_field_is_invalid_argument(
    pipeline, role, method, streaming, msg, caplog
):
    data = msg.SerializeToString()
    assert data.count(MARK.encode()) == 1
    data = data.replace(MARK.encode(), NOT_UTF8)
    with pytest.raises(grpc.RpcError) as err:
        call_raw(pipeline, role, method, streaming, data)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed protobuf" in err.value.details() and "UTF-8" in err.value.details()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    # The same message with valid text is served as usual (or refused for its content).
    try:
        call_raw(pipeline, role, method, streaming, msg.SerializeToString())
    except grpc.RpcError as other:
        assert other.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" not in other.details()


def test_get_info_limits_agree_with_the_context(pipeline):
    stub = generation_pb2_grpc.GenerationStub(grpc.insecure_channel(pipeline.address("router")))
    info = stub.GetInfo(generation_pb2.GetInfoRequest())
    assert info.max_context_tokens == CONTEXT
    assert info.max_output_tokens == CONTEXT - 1  # a prompt holds at least one token
    assert info.vocab_size == 320
    with pytest.raises(grpc.RpcError) as err:
        list(
            stub.Generate(
                generation_pb2.GenerateRequest(
                    prompt_text="hi", max_tokens=info.max_output_tokens + 1
                )
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"[1, {info.max_output_tokens}]" in err.value.details()
    first = next(
        iter(
            stub.Generate(
                generation_pb2.GenerateRequest(prompt_text="hi", max_tokens=info.max_output_tokens)
            )
        )
    )
    assert first.token_ids


def test_an_oversized_prompt_is_refused_at_once_and_stalls_nothing(pipeline):
    stub = generation_pb2_grpc.GenerationStub(grpc.insecure_channel(pipeline.address("router")))
    limit = CONTEXT * PROMPT_BYTES_PER_TOKEN
    huge = "é" * (1 << 19)  # 1 MiB of UTF-8

    def refuse(text: str) -> tuple[float, grpc.RpcError]:
        start = time.perf_counter()
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(generation_pb2.GenerateRequest(prompt_text=text, max_tokens=4)))
        return time.perf_counter() - start, err.value

    took, err = refuse(huge)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"over {limit} bytes" in err.details() and "prompt_text" in err.details()
    assert took < 1.0
    # Characters within the limit but bytes over it: refused by bytes too.
    _took, err = refuse("é" * (limit // 2 + 1))
    assert f"over {limit} bytes" in err.details()
    # Within the bytes, over the context in tokens: refused by tokens.
    _took, err = refuse("x " * (limit // 2 - 1))
    assert "tokens" in err.details() and "context" in err.details()

    # Three big prompts at a time, over and over, while GetInfo is timed.
    stop = threading.Event()

    def flood() -> int:
        n = 0
        while not stop.is_set():
            refuse(huge)
            refuse("x " * (limit // 2 - 1))  # tokenized: on a worker thread
            n += 1
        return n

    with ThreadPoolExecutor(3) as pool:
        floods = [pool.submit(flood) for _ in range(3)]
        waits = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            start = time.perf_counter()
            stub.GetInfo(generation_pb2.GetInfoRequest(), timeout=5)
            waits.append(time.perf_counter() - start)
        stop.set()
        rounds = sum(f.result() for f in floods)
    assert rounds >= 3
    assert max(waits) < 0.5, f"GetInfo took up to {max(waits):.3f} s"


def test_the_services_still_serve_after_the_edges(pipeline):
    stub = generation_pb2_grpc.GenerationStub(grpc.insecure_channel(pipeline.address("router")))
    out = list(stub.Generate(generation_pb2.GenerateRequest(prompt_text="def f():", max_tokens=8)))
    assert sum(len(r.token_ids) for r in out) == 8
    assert pipeline.status("verifier").load.slots_total
    assert pipeline.status("draft").model
    assert pipeline.wait_idle() == 0


def test_a_replica_refusing_a_step_the_router_built_is_internal_with_the_request_id(
    model_dir, caplog
):
    """The client's request passed the router's checks: a replica's INVALID_ARGUMENT (here: a
    verifier configured with a shorter context than the router) is an internal fault."""
    p = Pipeline(
        str(model_dir / "target"), str(model_dir / "draft_close"), max_context_tokens=32
    ).start()
    try:
        p.loop.run(p.servers["router"].stop(0))
        p.max_context_tokens = 128  # the router now believes in a longer context
        p.add_router()
        request = generation_pb2.GenerateRequest(
            prompt_token_ids=generation_pb2.TokenIds(ids=[5] * 60), max_tokens=4, request_id="r-42"
        )
        with pytest.raises(grpc.RpcError) as err:
            list(p.client().Generate(request, timeout=30))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == (
            "an internal service refused a step (request id r-42); the router log has the detail"
        )
        logged = [r.getMessage() for r in caplog.records if "r-42" in r.getMessage()]
        assert any("context" in m for m in logged), logged
    finally:
        p.close()


def test_a_full_replica_keeps_its_retry_hint_through_the_router():
    from google.rpc import status_pb2

    from specdec.core.errors import OutOfSlots
    from specdec.router.server import from_replica
    from specdec.serving.errors import retry_info

    status = status_pb2.Status(code=8, message="all 16 slots are busy", details=[retry_info(2.5)])
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    exc = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), trailers, "all 16 slots are busy"
    )
    error = from_replica(exc, "r-1")
    assert isinstance(error, OutOfSlots) and error.retry_after_s == 2.5
    assert str(error) == "all 16 slots are busy"
