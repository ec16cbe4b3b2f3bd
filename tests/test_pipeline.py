"""The pipeline over real gRPC on loopback: router, draft and verifier servers in-process."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from exact import assert_matches, exact_marginals

from specdec.core.tokenizer import Tokenizer
from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.local_pipeline import Pipeline
from specdec.router.load_guard import LoadGuard
from specdec.v1 import common_pb2, generation_pb2

pytestmark = pytest.mark.service

PROMPTS = ["def add(a, b):\n", "for i in range(10):", "class Point:\n    def", "import os\n"]


@pytest.fixture(scope="module")
def pipeline(model_dir: Path):
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close")).start()
    yield p
    p.close()


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
    assert pipeline.wait_idle() == 0


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


@pytest.mark.parametrize(
    "policy", [generation_pb2.DEPTH_POLICY_HEURISTIC, generation_pb2.DEPTH_POLICY_GOODPUT]
)
def test_greedy_each_adaptive_policy_equals_target_only(pipeline, reference, policy):
    tokens, _, _ = run(pipeline, prompt_text=PROMPTS[3], max_tokens=30, depth_policy=policy)
    assert tokens == reference(PROMPTS[3], 30)


@pytest.mark.parametrize(
    "method", [generation_pb2.DRAFT_METHOD_NGRAM, generation_pb2.DRAFT_METHOD_NONE]
)
def test_greedy_ngram_and_no_draft_equal_target_only(pipeline, reference, method):
    tokens, _, last = run(pipeline, prompt_text=PROMPTS[0] * 3, max_tokens=30, draft_method=method)
    assert tokens == reference(PROMPTS[0] * 3, 30)
    if method == generation_pb2.DRAFT_METHOD_NONE:
        assert last.stats.draft_tokens == 0


def test_eight_concurrent_requests_are_each_exact(pipeline, reference):
    prompts = [f"{p} # {i}" for i, p in enumerate(PROMPTS * 2)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: run(pipeline, prompt_text=p, max_tokens=24)[0], prompts))
    for prompt, tokens in zip(prompts, results, strict=True):
        assert tokens == reference(prompt, 24)
    assert pipeline.wait_idle() == 0


def test_draft_ahead_pauses_above_the_in_flight_limit_and_changes_no_token(pipeline, reference):
    deps = pipeline.router_deps
    saved, deps.ahead_max_in_flight = deps.ahead_max_in_flight, 0
    try:
        tokens, _, last = run(pipeline, prompt_text=PROMPTS[0], max_tokens=24, draft_ahead=True)
        assert tokens == reference(PROMPTS[0], 24)
        assert last.stats.ahead_hits == last.stats.ahead_misses == 0  # never asked ahead
        # Eight at once over a limit of three: requests pause and resume draft-ahead round by
        # round as the others start and finish.
        deps.ahead_max_in_flight = 3
        prompts = [f"{p} # pause {i}" for i, p in enumerate(PROMPTS * 2)]
        with ThreadPoolExecutor(8) as pool:
            runs = list(pool.map(lambda p: run(pipeline, prompt_text=p, max_tokens=24), prompts))
    finally:
        deps.ahead_max_in_flight = saved
    for prompt, (tokens, _, _) in zip(prompts, runs, strict=True):
        assert tokens == reference(prompt, 24)
    assert pipeline.wait_idle() == 0


class FlippingGuard(LoadGuard):
    """A load guard that switches every request between plain decoding and speculation on each
    of its rounds, starting plain: requests switch arms as often as possible, and every request
    of two rounds or more runs both. Rounds are counted per request (each runs in its own task
    on the router's event loop), so concurrent requests cannot fall into one arm."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: dict[asyncio.Task, int] = {}

    def plain(self) -> bool:
        task = asyncio.current_task()
        assert task is not None
        self.rounds[task] = self.rounds.get(task, -1) + 1
        return self.rounds[task] % 2 == 0


def test_the_load_guard_switching_arms_mid_request_changes_no_token(pipeline, reference):
    prompts = [f"{p} # guard {i}" for i, p in enumerate(PROMPTS)]
    saved, pipeline.router_deps.guard = pipeline.router_deps.guard, FlippingGuard()
    try:
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda p: run(pipeline, prompt_text=p, max_tokens=24), prompts))
    finally:
        pipeline.router_deps.guard = saved
    for prompt, (tokens, _, last) in zip(prompts, runs, strict=True):
        assert tokens == reference(prompt, 24)
        depths = list(last.stats.depths)
        assert 0 in depths and any(depths), depths  # both arms ran in this request
    assert pipeline.wait_idle() == 0


def test_text_streams_and_decodes_to_the_tokens(pipeline, model_dir):
    tokens, text, last = run(pipeline, prompt_text=PROMPTS[1], max_tokens=16)
    tokenizer = Tokenizer.from_folder(model_dir / "target")
    assert text == tokenizer.decode(tokens)
    assert last.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert last.stats.output_tokens == 16 and last.stats.time_to_first_token_ns > 0


def test_stop_string_ends_the_text_before_it(pipeline, model_dir):
    tokens, _text, _ = run(pipeline, prompt_text=PROMPTS[0], max_tokens=30)
    full = Tokenizer.from_folder(model_dir / "target").decode(tokens)
    stop = full[10:13]
    _, cut, last = run(pipeline, prompt_text=PROMPTS[0], max_tokens=30, stop=[stop])
    assert last.finish_reason == generation_pb2.FINISH_REASON_STOP_SEQUENCE
    assert cut == full[: full.index(stop)]


def test_deadline_frees_slots_on_both_replicas(pipeline):
    request = generation_pb2.GenerateRequest(prompt_text=PROMPTS[2], max_tokens=240)
    with pytest.raises(grpc.RpcError) as err:
        for _ in pipeline.client().Generate(request, timeout=0.03):
            time.sleep(0.01)  # a slow reader: the deadline passes mid-stream
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert pipeline.wait_idle() == 0


def test_cancel_frees_slots_on_both_replicas(pipeline):
    call = pipeline.client().Generate(
        generation_pb2.GenerateRequest(prompt_text=PROMPTS[0], max_tokens=200)
    )
    next(call)
    call.cancel()
    assert pipeline.wait_idle() == 0


LONG = "x" * ((1 << 20) + 1)


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        (dict(max_tokens=5), "prompt"),
        (dict(prompt_text="", max_tokens=5), "prompt_text"),
        (dict(prompt_token_ids=generation_pb2.TokenIds(ids=[]), max_tokens=5), "prompt_token_ids"),
        (
            dict(prompt_token_ids=generation_pb2.TokenIds(ids=[1, 99999]), max_tokens=5),
            "prompt_token_ids",
        ),
        (
            dict(prompt_token_ids=generation_pb2.TokenIds(ids=[1] * 256), max_tokens=5),
            "prompt_token_ids",
        ),
        (dict(prompt_text="hi", max_tokens=0), "max_tokens"),
        (dict(prompt_text="hi", max_tokens=100000), "max_tokens"),
        (
            dict(
                prompt_text="hi", max_tokens=5, sampling=common_pb2.SamplingParams(temperature=-0.5)
            ),
            "temperature",
        ),
        (
            dict(
                prompt_text="hi",
                max_tokens=5,
                sampling=common_pb2.SamplingParams(temperature=1, top_p=0.0),
            ),
            "top_p",
        ),
        (
            dict(
                prompt_text="hi",
                max_tokens=5,
                sampling=common_pb2.SamplingParams(temperature=1, top_p=1.5),
            ),
            "top_p",
        ),
        (dict(prompt_text="hi", max_tokens=5, depth_policy=42), "depth_policy"),
        (dict(prompt_text="hi", max_tokens=5, fixed_depth=17), "fixed_depth"),
        (dict(prompt_text="hi", max_tokens=5, stop=[""]), "stop"),
        (dict(prompt_text="hi", max_tokens=5, session_id="no spaces"), "session_id"),
        (dict(prompt_text=LONG, max_tokens=5), "prompt_text"),
    ],
)
def test_bad_fields_are_invalid_argument_naming_the_field(pipeline, fields, field_name):
    with pytest.raises(grpc.RpcError) as err:
        run(pipeline, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_name in err.value.details()
    assert "Traceback" not in err.value.details()


def test_get_info_describes_the_deployment(pipeline):
    info = pipeline.client().GetInfo(generation_pb2.GetInfoRequest())
    assert info.target_model == "target" and info.vocab_size == 320
    assert info.max_context_tokens == 256 and "goodput" in info.depth_policies


@pytest.mark.slow
@pytest.mark.parametrize("ahead", [True, False], ids=["draft-ahead", "no-draft-ahead"])
def test_pipeline_sampling_keeps_the_target_distribution(pipeline, model_dir, ahead):
    """First three tokens sampled through router, draft and verifier vs the exact marginals:
    the prefill's token, a drafted one (accepted or recovered), a bonus or plain one."""
    target = ModelRunner(load_model(model_dir / "target"), num_slots=1, max_seq_len=256)
    prompt = Tokenizer.from_folder(model_dir / "target").encode(PROMPTS[0])
    params = SamplingParams(temperature=1.5, top_k=6)
    marginals = exact_marginals(target, prompt, params, 3)
    n = 1200

    def one(seed: int) -> tuple[list[int], generation_pb2.GenerateResponse]:
        sampling = common_pb2.SamplingParams(temperature=1.5, top_k=6, seed=seed)
        tokens, _, last = run(
            pipeline,
            prompt_token_ids=generation_pb2.TokenIds(ids=prompt),
            max_tokens=3,
            sampling=sampling,
            depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
            fixed_depth=1,
            draft_ahead=ahead,
        )
        return tokens, last

    with ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(one, range(n)))
    assert sum(last.stats.accepted_tokens for _, last in outputs) > n // 10  # drafts were used
    # (Whether a proposal drafted ahead arrives before its verdict is a race between two tiny
    # models here; the in-process test of draft-ahead checks the cached path every time.)
    assert all(last.stats.draft_ahead == ahead for _, last in outputs)
    for i, exact in enumerate(marginals):
        assert_matches(Counter(tokens[i] for tokens, _ in outputs), exact, n)
