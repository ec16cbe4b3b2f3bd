"""The pipeline over real gRPC on loopback: router, draft and verifier servers in-process."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from harness import Pipeline

from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate as engine_generate
from specdec.engine.tokenizer import Tokenizer
from specdec.v1 import common_pb2, generation_pb2

pytestmark = pytest.mark.service

PROMPTS = ["def add(a, b):\n", "for i in range(10):", "class Point:\n    def", "import os\n"]


@pytest.fixture(scope="module")
def pipeline(model_dir: Path):
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close")).start()
    yield p
    p.close()


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    runner = ModelRunner(load_model(model_dir / "target"), num_slots=1, max_seq_len=256)
    tokenizer = Tokenizer.from_folder(model_dir / "target")

    def ref(prompt: str, max_tokens: int, params: SamplingParams | None = None):
        ids = tokenizer.encode(prompt)
        params = params or SamplingParams()
        return engine_generate(runner, ids, params, max_tokens, None, 0).token_ids

    return ref


def run(pipeline: Pipeline, **fields):
    responses = list(pipeline.client().Generate(generation_pb2.GenerateRequest(**fields)))
    tokens = [t for r in responses for t in r.token_ids]
    text = "".join(r.text for r in responses)
    return tokens, text, responses[-1]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_default_policy_equals_target_only(pipeline, reference, prompt):
    tokens, _, last = run(pipeline, prompt_text=prompt, max_tokens=24)
    assert tokens == reference(prompt, 24)
    assert last.stats.rounds > 0 and last.stats.draft_tokens > 0


@pytest.mark.parametrize("k", range(9))
def test_greedy_fixed_depth_equals_target_only(pipeline, reference, k):
    tokens, _, last = run(
        pipeline,
        prompt_text=PROMPTS[0],
        max_tokens=20,
        depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
        fixed_depth=k,
    )
    assert tokens == reference(PROMPTS[0], 20)
    assert set(last.stats.depths[:-1]) <= {k}


def test_status_shows_no_leaked_slots(pipeline):
    run(pipeline, prompt_text=PROMPTS[1], max_tokens=5)
    assert pipeline.verifier_status().slots_in_use == 0
    assert pipeline.draft_status().slots_in_use == 0


def test_bad_input_is_invalid_argument(pipeline):
    with pytest.raises(grpc.RpcError) as err:
        run(pipeline, prompt_text="", max_tokens=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in err.value.details()


def test_sampling_with_seed_is_reproducible(pipeline):
    sampling = common_pb2.SamplingParams(temperature=0.9, seed=7)
    fields = dict(
        prompt_text=PROMPTS[2],
        max_tokens=16,
        sampling=sampling,
        depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
        fixed_depth=3,
    )
    assert run(pipeline, **fields)[0] == run(pipeline, **fields)[0]
