"""Property-based fuzz of every RPC against real servers: random field values and random bytes.

Each request message is drawn from its descriptor (every field, with values both plausible and
extreme: huge ids, NaN and infinite floats, unknown enum values, odd text), streams as a few
such messages, and raw bytes besides. Every answer must be OK or a clear refusal; never
UNKNOWN or INTERNAL (a crash), never a hang, never an ERROR in the servers' log (a bug caught
and survived is still a bug); and the servers must serve normally afterwards.
``SPECDEC_FUZZ_EXAMPLES`` cases per test (default 100; ``make test-fuzz`` runs 10^4), drawn
deterministically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from specdec.local_pipeline import Pipeline
from specdec.v1 import common_pb2, draft_pb2, generation_pb2, verifier_pb2

pytestmark = [pytest.mark.service, pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("SPECDEC_FUZZ_EXAMPLES", "100"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
}
CALL_TIMEOUT_S = 20

_C = FieldDescriptor


def _unsigned(bits: int) -> st.SearchStrategy[int]:
    # Mostly small (plausible ids, positions, lengths), sometimes anywhere in the range.
    return st.one_of(st.integers(0, 12), st.integers(0, 400), st.integers(0, 2**bits - 1))


def _signed(bits: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(-2, 12), st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1))


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    _C.CPPTYPE_UINT32: _unsigned(32),
    _C.CPPTYPE_UINT64: _unsigned(64),
    _C.CPPTYPE_INT32: _signed(32),
    _C.CPPTYPE_INT64: _signed(64),
    _C.CPPTYPE_FLOAT: st.one_of(st.floats(0, 2, width=32), st.floats(width=32)),
    _C.CPPTYPE_DOUBLE: st.floats(),
    _C.CPPTYPE_BOOL: st.booleans(),
    _C.CPPTYPE_ENUM: st.integers(-1, 6),
    _C.CPPTYPE_STRING: st.one_of(st.text(max_size=24), st.text("abc-_.:/", max_size=8)),
}


def _field(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.cpp_type == _C.CPPTYPE_MESSAGE:
        one = messages(f.message_type, depth + 1)
    elif f.type == FieldDescriptor.TYPE_BYTES:  # (a string field's C++ type too)
        one = st.binary(max_size=64)
    else:
        one = _SCALARS[f.cpp_type]
    if f.is_repeated:
        return st.lists(one, max_size=6 if f.cpp_type == _C.CPPTYPE_MESSAGE else 12)
    return one


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type ``desc``: each field set or not, to any value its type allows."""
    cls = _CLASSES[desc.full_name]
    if depth > 3:
        return st.just(cls())
    optional = {f.name: _field(f, depth) for f in desc.fields}
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        f = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name) if f.is_repeated else None
        if target is not None and f.cpp_type == _C.CPPTYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        elif target is not None:
            target.extend(value)
        elif f.cpp_type == _C.CPPTYPE_MESSAGE:
            getattr(msg, name).CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


_CLASSES: dict[str, type[Message]] = {
    getattr(module, name).DESCRIPTOR.full_name: getattr(module, name)
    for module in (common_pb2, draft_pb2, generation_pb2, verifier_pb2)
    for name in module.DESCRIPTOR.message_types_by_name  # (no message nests a type)
}

# role, method, (request streaming, response streaming), request type
RPCS = {
    "Generate": ("router", "/specdec.v1.Generation/Generate", (False, True)),
    "GetInfo": ("router", "/specdec.v1.Generation/GetInfo", (False, False)),
    "Verify": ("verifier", "/specdec.v1.Verifier/Verify", (True, True)),
    "VerifierStatus": ("verifier", "/specdec.v1.Verifier/GetStatus", (False, False)),
    "Propose": ("draft", "/specdec.v1.Draft/Propose", (True, True)),
    "DraftStatus": ("draft", "/specdec.v1.Draft/GetStatus", (False, False)),
}


class _Errors(logging.Handler):
    """What the servers log at ERROR or above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        taken = [
            f"{r.name}: {r.getMessage()} {r.exc_info[1] if r.exc_info else ''}"
            for r in self.records
        ]
        self.records.clear()
        return taken


ERRORS = _Errors()


@pytest.fixture(scope="module")
def pipeline(model_dir: Path):
    logging.getLogger("specdec").addHandler(ERRORS)
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close")).start()
    yield p
    p.close()
    logging.getLogger("specdec").removeHandler(ERRORS)


@pytest.fixture(scope="module")
def channels(pipeline: Pipeline):
    roles = {role for role, _, _ in RPCS.values()}
    opened = {role: grpc.insecure_channel(pipeline.address(role)) for role in roles}
    yield opened
    for channel in opened.values():
        channel.close()


def call(channels, rpc: str, payload: bytes | list[bytes]) -> grpc.StatusCode:
    """Send raw request bytes (a list of them for a request stream); the status it ends with."""
    role, method, (stream_in, stream_out) = RPCS[rpc]
    channel = channels[role]
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[(stream_in, stream_out)]
    request = iter(payload) if stream_in else payload
    assert ERRORS.take() == []  # (logged after the previous call ended)
    try:
        answer = kind(method)(request, timeout=CALL_TIMEOUT_S)
        if stream_out:
            list(answer)
    except grpc.RpcError as err:
        assert ERRORS.take() == []
        assert err.code() in ALLOWED, f"{rpc}: {err.code().name}: {err.details()}"
        assert "Traceback" not in (err.details() or "") and "<class" not in (err.details() or "")
        event(err.code().name)  # (pytest --hypothesis-show-statistics tallies them)
        return err.code()
    assert ERRORS.take() == []
    event("OK")
    return grpc.StatusCode.OK


# Plausible messages too (fields in or near their ranges), so the fuzz gets past the first
# check and into the loops: sampling, drafting, verifying random drafts and distributions.
VOCAB = 320
_ids = st.lists(st.integers(0, VOCAB + 2), min_size=1, max_size=10)
_sampling = st.builds(
    common_pb2.SamplingParams,
    temperature=st.one_of(st.just(0.0), st.floats(0, 2, width=32)),
    top_k=st.integers(0, 400),
    top_p=st.floats(0.0625, 1, width=32),
    seed=st.integers(0, 2**64 - 1),
)


def _short(msg: generation_pb2.GenerateRequest) -> generation_pb2.GenerateRequest:
    # Keep generations short: the fuzz is about the edges, not about decoding long outputs.
    if 8 < msg.max_tokens < 1 << 12:
        msg.max_tokens %= 9
    return msg


_plausible_generate = st.builds(
    generation_pb2.GenerateRequest,
    prompt_text=st.text(min_size=1, max_size=40),
    max_tokens=st.integers(1, 8),
    sampling=_sampling,
    stop=st.lists(st.text(min_size=1, max_size=4), max_size=2),
    session_id=st.text("abc", max_size=3),
    depth_policy=st.integers(0, 3),
    fixed_depth=st.integers(0, 17),
    draft_method=st.integers(0, 3),
    draft_ahead=st.booleans(),
)


def _row(width: int) -> st.SearchStrategy[common_pb2.SparseDistribution]:
    ids = st.lists(st.integers(0, VOCAB), min_size=1, max_size=width, unique=True)
    weights = st.one_of(
        st.lists(st.floats(0, 1, width=32), min_size=width, max_size=width),
        st.lists(st.floats(width=32), min_size=width, max_size=width),
    )

    def build(ids: list[int], w: list[float], normalize: bool) -> common_pb2.SparseDistribution:
        w = w[: len(ids)]
        total = sum(w)
        if normalize and total > 0 and total == total:
            w = [x / total for x in w]
        return common_pb2.SparseDistribution(token_ids=ids, probs=w)

    return st.builds(build, ids, weights, st.booleans())


_verify_step = st.builds(
    verifier_pb2.VerifyStep,
    position=st.integers(0, 16),
    draft_token_ids=st.lists(st.integers(0, VOCAB), max_size=5),
    draft_probs=st.lists(_row(4), max_size=5),
)


@st.composite
def _plausible_verify(draw: st.DrawFn) -> list[verifier_pb2.VerifyRequest]:
    prompt = draw(_ids)
    opening = verifier_pb2.OpenSequence(
        prompt_token_ids=prompt,
        sampling=draw(_sampling),
        seed=draw(st.integers(0, 2**64 - 1)),
        session_id=draw(st.text("ab", max_size=2)),
    )
    if draw(st.booleans()):
        opening.step.CopyFrom(draw(_verify_step))
    msgs = [verifier_pb2.VerifyRequest(open=opening)]
    for step in draw(st.lists(_verify_step, max_size=3)):
        if draw(st.booleans()):  # the position the sequence is at after a plain open
            step.position = len(prompt) + 1
        msgs.append(verifier_pb2.VerifyRequest(step=step))
    return msgs


_ahead = st.builds(draft_pb2.AheadSettings, width=st.integers(0, 5), depth=st.integers(0, 5))
_plausible_propose = st.tuples(
    st.builds(
        draft_pb2.OpenDraft,
        prompt_token_ids=_ids,
        sampling=_sampling,
        seed=st.integers(0, 2**64 - 1),
        method=st.integers(0, 2),
        ahead=_ahead,
    ),
    st.lists(
        st.builds(
            draft_pb2.ProposeStep,
            position=st.integers(0, 16),
            token_ids=st.lists(st.integers(0, VOCAB), max_size=4),
            depth=st.integers(0, 6),
            verifying=st.integers(0, 6),
            ahead=_ahead,
        ),
        max_size=4,
    ),
).map(
    lambda t: (
        [draft_pb2.ProposeRequest(open=t[0])] + [draft_pb2.ProposeRequest(step=s) for s in t[1]]
    )
)


def _generate_requests() -> st.SearchStrategy[generation_pb2.GenerateRequest]:
    return st.one_of(messages(generation_pb2.GenerateRequest.DESCRIPTOR), _plausible_generate).map(
        _short
    )


def _stream(desc: Descriptor, plausible: st.SearchStrategy[list[Message]]):
    random = st.lists(messages(desc), min_size=1, max_size=4)
    return st.one_of(random, plausible).map(lambda ms: [m.SerializeToString() for m in ms])


@FUZZ
@given(msg=_generate_requests())
def test_generate(channels, msg):
    call(channels, "Generate", msg.SerializeToString())


@FUZZ
@given(msgs=_stream(verifier_pb2.VerifyRequest.DESCRIPTOR, _plausible_verify()))
def test_verify(channels, msgs):
    call(channels, "Verify", msgs)


@FUZZ
@given(msgs=_stream(draft_pb2.ProposeRequest.DESCRIPTOR, _plausible_propose))
def test_propose(channels, msgs):
    call(channels, "Propose", msgs)


@FUZZ
@given(
    rpc=st.sampled_from(sorted(RPCS)),
    data=st.lists(st.binary(max_size=48), min_size=1, max_size=3),
)
def test_random_bytes_on_every_rpc(channels, rpc, data):
    stream_in = RPCS[rpc][2][0]
    call(channels, rpc, data if stream_in else data[0])


@FUZZ
@given(
    rpc=st.sampled_from(["GetInfo", "VerifierStatus", "DraftStatus"]),
    msg=messages(generation_pb2.GetInfoRequest.DESCRIPTOR),
)
def test_status_calls(channels, rpc, msg):
    assert call(channels, rpc, msg.SerializeToString()) == grpc.StatusCode.OK


def test_the_servers_still_serve_after_the_fuzz(pipeline: Pipeline):
    request = generation_pb2.GenerateRequest(prompt_text="def add(a, b):\n", max_tokens=8)
    out = list(pipeline.client().Generate(request, timeout=30))
    assert sum(len(r.token_ids) for r in out) == 8
    assert pipeline.wait_idle() == 0
    assert ERRORS.take() == []
