"""The pipeline with a feature draft: the verifier returns the target's hidden states, the router
passes them on with each step, the draft reads them. Greedy output stays target-only output; a
draft told nonsense about hidden states refuses it with INVALID_ARGUMENT."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate as engine_generate
from specdec.local_pipeline import Pipeline
from specdec.router.ports import merge_hidden
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, generation_pb2

pytestmark = pytest.mark.service

PROMPTS = ["def add(a, b):\n", "for i in range(10):", "class Point:\n    def"]


@pytest.fixture(scope="module")
def pipeline(model_dir: Path, feature_draft_dir: Path):
    p = Pipeline(str(model_dir / "target"), str(feature_draft_dir)).start()
    yield p
    p.close()


def run(pipeline: Pipeline, **fields):
    responses = list(pipeline.client().Generate(generation_pb2.GenerateRequest(**fields)))
    return [t for r in responses for t in r.token_ids], responses[-1]


def test_the_draft_says_it_reads_features(pipeline):
    assert pipeline.status("draft").reads_features
    assert not pipeline.status("verifier").reads_features


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_default_policy_equals_target_only(pipeline, reference, prompt):
    tokens, last = run(pipeline, prompt_text=prompt, max_tokens=32)
    assert tokens == reference(prompt, 32)
    assert last.stats.draft_tokens > 0
    assert not last.stats.draft_ahead  # a feature draft drafts on demand


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_fixed_depth_equals_target_only_and_accepts(pipeline, reference, k):
    # The fitted draft knows the target's continuation of token 1 (the fixture's prompts).
    tokens, last = run(
        pipeline,
        prompt_token_ids=generation_pb2.TokenIds(ids=[1]),
        max_tokens=36,
        depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
        fixed_depth=k,
    )
    runner = ModelRunner(load_model(Path(pipeline.target)), num_slots=1, max_seq_len=256)
    assert tokens == engine_generate(runner, [1], SamplingParams(), 36, None, 0).token_ids
    assert last.stats.accepted_tokens > 0
    assert pipeline.wait_idle() == 0


def test_seeded_sampling_is_reproducible(pipeline):
    fields = dict(
        prompt_text=PROMPTS[2],
        max_tokens=16,
        sampling=common_pb2.SamplingParams(temperature=0.9, seed=7),
        depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
        fixed_depth=3,
    )
    assert run(pipeline, **fields)[0] == run(pipeline, **fields)[0]


@pytest.mark.parametrize(
    ("hidden", "field"),
    [
        (common_pb2.HiddenStates(start=0, count=1, width=7, data=b"\0" * 14), "width"),
        (common_pb2.HiddenStates(start=0, count=2, width=64, data=b"\0" * 10), "data"),
        (common_pb2.HiddenStates(start=250, count=10, width=64, data=b"\0" * 1280), "exceed"),
        (common_pb2.HiddenStates(start=0, count=1, width=64, data=b"\xff" * 128), "finite"),
    ],
)
def test_bad_hidden_states_are_invalid_argument(pipeline, hidden, field):
    stub = draft_pb2_grpc.DraftStub(grpc.insecure_channel(pipeline.address("draft")))
    messages = [
        draft_pb2.ProposeRequest(open=draft_pb2.OpenDraft(prompt_token_ids=[1, 2, 3], seed=1)),
        draft_pb2.ProposeRequest(
            step=draft_pb2.ProposeStep(position=3, token_ids=[4], depth=2, hidden_states=hidden)
        ),
    ]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Propose(iter(messages), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    assert pipeline.wait_idle() == 0


def _rows(start: int, count: int, fill: int) -> common_pb2.HiddenStates:
    data = bytes([fill]) * 4 * count  # 2 bf16 values a row
    return common_pb2.HiddenStates(start=start, count=count, width=2, data=data)


def test_hidden_states_merge_in_the_router_without_torch():
    first = _rows(0, 3, 1)
    assert merge_hidden(None, first) == first
    joined = merge_hidden(first, _rows(3, 2, 2))  # follows on
    assert (joined.start, joined.count) == (0, 5)
    assert joined.data == b"\x01" * 12 + b"\x02" * 8
    over = merge_hidden(joined, _rows(4, 2, 3))  # starts earlier than the end: replaces from 4
    assert (over.start, over.count) == (0, 6)
    assert over.data == b"\x01" * 12 + b"\x02" * 4 + b"\x03" * 8
    assert merge_hidden(joined, _rows(0, 7, 4)) == _rows(0, 7, 4)  # a re-opened verifier
    assert merge_hidden(joined, _rows(9, 1, 5)) == _rows(9, 1, 5)  # a gap: the new rows only
