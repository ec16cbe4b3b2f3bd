"""Logprobs while speculating, gRPC and HTTP, and the gauges an inference gateway reads.

Real servers on loopback (``local_pipeline``), the tiny test models. The logprobs are checked
three ways: the same at k = 0 (target-only decoding) as at k = 4 and under the default policy
with draft-ahead; equal to ``log_softmax`` of an in-process forward of the target over the
same tokens (so the distribution sums to 1); top-N sorted and holding the chosen token when it
ranks that high. Then the OpenAI shapes, and ``/metrics`` of the router.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
import torch
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from specdec.core.rounds import Proposal, Verdict
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.logprobs import token_logprobs
from specdec.engine.ports import EngineVerifier, run_now
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.v1 import common_pb2, generation_pb2, verifier_pb2, verifier_pb2_grpc
from tests.fixtures import HTTP_MODEL, HttpPipeline

pytestmark = pytest.mark.service

PROMPT = "def add(a, b):\n"
MODEL = HTTP_MODEL
TOL = 1e-5
N_TOKENS = 20


@pytest.fixture(scope="module")
def pipeline(model_dir: Path) -> Iterator[HttpPipeline]:
    # One verifier slot: the gauge test fills it (the tests run one request at a time).
    p = HttpPipeline(str(model_dir / "target"), str(model_dir / "draft_close"), slots=1).start()
    yield p
    p.close()


@pytest.fixture(scope="module")
def target(model_dir: Path) -> ModelRunner:
    return ModelRunner(load_model(model_dir / "target"), num_slots=1)


@pytest.fixture(scope="module")
def url(pipeline: HttpPipeline) -> str:
    return f"http://127.0.0.1:{pipeline.servers['router'].http_port}/v1"  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


# --- the engine ----------------------------------------------------------------------------------


def test_token_logprobs_closed_form():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    found = token_logprobs(logits, [1, 0], 2)
    exact = torch.log_softmax(logits.double(), dim=-1)  # [2, 4]
    assert [t.token_id for t in found] == [1, 0]
    assert found[0].logprob == pytest.approx(float(exact[0, 1]), abs=TOL)
    assert [i for i, _ in found[0].top] == [3, 2]  # token 1 is not among the top 2
    assert [lp for _, lp in found[0].top] == pytest.approx(exact[0, [3, 2]].tolist(), abs=TOL)
    assert found[1].top[0][0] == 0 and found[1].top[0][1] == pytest.approx(found[1].logprob)
    assert all(t.top == () for t in token_logprobs(logits, [1, 0], 0))
    with pytest.raises(ValueError, match="num_top"):
        token_logprobs(logits, [1, 0], 21)
    with pytest.raises(ValueError, match="logits must be"):
        token_logprobs(logits, [1], 2)


def test_engine_verifier_returns_the_committed_tokens_logprobs(target):
    """In process: a step that accepts every draft returns one record per committed token, the
    same as a forward over the whole sequence."""
    prompt = [5, 6, 7, 8]
    plain = EngineVerifier(target, SamplingParams(), seed=0)
    greedy = [run_now(_first(plain, prompt)).next_token_id]
    for _ in range(3):  # target-only decoding, to draft exactly what the target would pick
        greedy.append(run_now(_step(plain, prompt + greedy, ())).next_token_id)
    plain.close()
    verifier = EngineVerifier(target, SamplingParams(), seed=0, logprobs=3)
    first = run_now(_first(verifier, prompt))
    assert first.next_token_id == greedy[0] and len(first.logprobs) == 1
    verdict = run_now(_step(verifier, prompt + greedy[:1], greedy[1:]))
    verifier.close()
    assert verdict.num_accepted == 3 and len(verdict.logprobs) == 4
    exact = reference(target, prompt, greedy + [verdict.next_token_id])  # [5, V]
    found = [*first.logprobs, *verdict.logprobs]
    assert [t.token_id for t in found] == greedy + [verdict.next_token_id]
    for row, token in zip(exact, found, strict=True):
        assert token.logprob == pytest.approx(float(row[token.token_id]), abs=TOL)
        assert [i for i, _ in token.top] == torch.topk(row, 3).indices.tolist()


async def _first(verifier: EngineVerifier, prompt: list[int]) -> Verdict:
    return await (await verifier.open(prompt))


async def _step(verifier: EngineVerifier, committed: list[int], drafts: Sequence[int]) -> Verdict:
    return await (await verifier.verify(committed, Proposal(tuple(drafts))))


# --- gRPC ----------------------------------------------------------------------------------------


Run = tuple[list[int], list[common_pb2.TokenLogprob], generation_pb2.GenerationStats]


def generate(pipeline: HttpPipeline, **fields: Any) -> Run:
    """Token ids, logprobs and stats of one Generate call."""
    request = generation_pb2.GenerateRequest(
        prompt_text=PROMPT, **{"max_tokens": N_TOKENS, **fields}
    )
    ids: list[int] = []
    logprobs: list[common_pb2.TokenLogprob] = []
    stats = generation_pb2.GenerationStats()
    for response in pipeline.client().Generate(request):
        ids += response.token_ids
        logprobs += response.logprobs
        stats = response.stats if response.HasField("stats") else stats
    return ids, logprobs, stats


def reference(target: ModelRunner, prompt: list[int], ids: list[int]) -> torch.Tensor:
    """log_softmax (in fp64) of the target's logits before each of ``ids``, in one forward of
    prompt and output: [N, V]."""
    slot = target.cache.allocate()
    try:
        logits = target.step([Chunk(slot, prompt + ids[:-1], 0, len(ids))])[0]  # [N, V]
    finally:
        target.cache.free(slot)
    return torch.log_softmax(logits.double(), dim=-1)


def assert_same(a: list[common_pb2.TokenLogprob], b: list[common_pb2.TokenLogprob]) -> None:
    assert [t.token_id for t in a] == [t.token_id for t in b]
    for x, y in zip(a, b, strict=True):
        assert x.logprob == pytest.approx(y.logprob, abs=TOL)
        assert [t.token_id for t in x.top] == [t.token_id for t in y.top]
        assert [t.logprob for t in x.top] == pytest.approx([t.logprob for t in y.top], abs=TOL)


SAMPLED = common_pb2.SamplingParams(temperature=0.8, seed=1234)
MODES = [
    pytest.param({}, id="greedy"),
    pytest.param({"sampling": SAMPLED}, id="sampled-0.8"),
]


def assert_exact(found: list[common_pb2.TokenLogprob], exact: torch.Tensor, num_top: int) -> None:
    """``found`` equals the reference rows ``exact`` [N, V]: chosen logprob and sorted top-N."""
    assert torch.logsumexp(exact, dim=-1) == pytest.approx(torch.zeros(len(found)), abs=1e-9)
    for row, token in zip(exact, found, strict=True):
        assert token.logprob == pytest.approx(float(row[token.token_id]), abs=TOL)
        values, ids = torch.topk(row, num_top)
        assert [t.token_id for t in token.top] == ids.tolist()
        tops = [t.logprob for t in token.top]
        assert tops == pytest.approx(values.tolist(), abs=TOL)
        assert tops == sorted(tops, reverse=True)
        if token.logprob >= tops[-1] + TOL:  # it ranks in the top N: it is among them
            assert token.token_id in [t.token_id for t in token.top]


@pytest.mark.parametrize("mode", MODES)
def test_logprobs_are_the_targets_whatever_the_depth(pipeline, target, mode):
    """k = 0 (target-only), k = 4, and the default policy with draft-ahead. Greedy: the same
    tokens and logprobs every time. Sampling (seeded, T = 0.8): the tokens depend on the depths
    (the same distribution, other draws), so each run is checked against the reference for its
    own tokens: the target's raw logprobs, not the warped distribution it sampled from."""
    fixed = generation_pb2.DEPTH_POLICY_FIXED
    runs = {
        "k=0": generate(pipeline, depth_policy=fixed, fixed_depth=0, logprobs=5, **mode),
        "k=4": generate(pipeline, depth_policy=fixed, fixed_depth=4, logprobs=5, **mode),
        "default": generate(pipeline, draft_ahead=True, logprobs=5, **mode),
    }
    prompt = pipeline.router_deps.tokenizer.encode(PROMPT)
    for ids, found, _ in runs.values():
        assert len(found) == len(ids) > 1
        assert [t.token_id for t in found] == ids
        assert_exact(found, reference(target, prompt, ids), 5)
    # The speculating runs committed several tokens per round (from one verify forward each).
    assert runs["k=0"][2].accepted_tokens == 0
    assert runs["k=4"][2].accepted_tokens > 0 and runs["default"][2].accepted_tokens > 0
    assert runs["default"][2].draft_ahead
    if not mode:
        plain_ids, plain, _ = runs["k=0"]
        for ids, found, _ in runs.values():
            assert ids == plain_ids
            assert_same(found, plain)


def test_no_logprobs_unless_asked(pipeline):
    ids, logprobs, _ = generate(pipeline)
    assert ids and logprobs == []
    ids, logprobs, _ = generate(pipeline, logprobs=0)
    assert len(logprobs) == len(ids) and all(len(t.top) == 0 for t in logprobs)


def test_logprobs_beyond_20_are_invalid(pipeline):
    ids, logprobs, _ = generate(pipeline, logprobs=20)
    assert len(logprobs) == len(ids)
    assert all(len(t.top) == 20 for t in logprobs)
    with pytest.raises(grpc.RpcError) as raised:
        generate(pipeline, logprobs=21)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "logprobs" in raised.value.details() and "20" in raised.value.details()


# --- HTTP ----------------------------------------------------------------------------------------


def http_json(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST ``body``; the status and the JSON answer (errors included)."""
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def completion_logprobs(client: openai.OpenAI, k: int | None, **fields: Any) -> Any:
    extra = {"specdec": {"k": k}} if k is not None else {}
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=N_TOKENS, extra_body=extra, **fields
    )
    return out.choices[0]


@pytest.mark.parametrize("k", [0, 4, None])
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled-0.8"])
def test_completions_logprobs_equal_grpc(pipeline, client, k, sampled):
    """The legacy shape carries the gRPC answer's numbers (which the gRPC test checked against
    the target): greedy at any depth; seeded sampling at the same fixed depth (same draws)."""
    sampling = {"temperature": 0.8, "seed": 99} if sampled else {"temperature": 0}
    choice = completion_logprobs(client, k, logprobs=3, **sampling)
    fields: dict[str, Any] = {"logprobs": 3}
    if sampled:
        fields["sampling"] = common_pb2.SamplingParams(temperature=0.8, seed=99)
        if k is None:  # the default policy's depths vary from run to run
            fields["depth_policy"] = generation_pb2.DEPTH_POLICY_FIXED
            fields["fixed_depth"] = 4
            choice = completion_logprobs(client, 4, logprobs=3, **sampling)
    if k is not None:
        fields.update(depth_policy=generation_pb2.DEPTH_POLICY_FIXED, fixed_depth=k)
    ids, expected, _ = generate(pipeline, **fields)
    texts = pipeline.router_deps.tokenizer
    found = choice.logprobs
    assert found.tokens == [texts.decode([t], skip_special_tokens=False) for t in ids]
    assert found.token_logprobs == pytest.approx([t.logprob for t in expected], abs=TOL)
    for tops, token, text in zip(found.top_logprobs, expected, found.tokens, strict=True):
        # The 3 likeliest and the chosen token (OpenAI's legacy shape), most likely first.
        assert len(tops) <= 4 and text in tops
        assert list(tops.values()) == sorted(tops.values(), reverse=True)
        want: dict[str, float] = {}
        for a in (*token.top, token):  # texts may coincide (U+FFFD): the likeliest one's stays
            want.setdefault(texts.decode([a.token_id], skip_special_tokens=False), a.logprob)
        assert tops == pytest.approx(want, abs=TOL)
    offsets = [0]
    for text in found.tokens[:-1]:
        offsets.append(offsets[-1] + len(text))
    assert found.text_offset == offsets
    joined = "".join(found.tokens)
    if choice.finish_reason == "length" and "\ufffd" not in joined:  # (no partial characters)
        assert joined == choice.text


def test_completion_logprobs_0_gives_the_chosen_tokens_alone(client):
    found = completion_logprobs(client, None, logprobs=0, temperature=0).logprobs
    assert found.tokens
    entries = zip(found.tokens, found.token_logprobs, found.top_logprobs, strict=True)
    for text, value, tops in entries:
        assert tops == {text: value}


def test_streamed_completion_logprobs_equal_whole(client):
    whole = completion_logprobs(client, None, logprobs=2, temperature=0).logprobs
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=N_TOKENS, temperature=0, logprobs=2, stream=True
    )
    tokens: list[str] = []
    token_logprobs: list[float] = []
    offsets: list[int] = []
    for chunk in stream:
        found = chunk.choices[0].logprobs
        if found is not None:
            tokens += found.tokens
            token_logprobs += found.token_logprobs
            offsets += found.text_offset
    assert tokens == whole.tokens and offsets == whole.text_offset
    assert token_logprobs == pytest.approx(whole.token_logprobs, abs=TOL)


def test_chat_logprobs_whole_and_streamed(pipeline, client):
    messages = [{"role": "user", "content": "def f():"}]
    common: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": 12}
    whole = client.chat.completions.create(
        **common, temperature=0, logprobs=True, top_logprobs=4
    ).choices[0]
    content = whole.logprobs.content
    assert content and all(len(t.top_logprobs) == 4 for t in content)
    for token in content:
        assert token.bytes == list(token.token.encode())
        tops = [a.logprob for a in token.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert token.logprob <= tops[0] + TOL
        if token.logprob >= tops[-1] + TOL:
            assert token.token in [a.token for a in token.top_logprobs]
    joined = "".join(t.token for t in content)
    if whole.finish_reason == "length" and "\ufffd" not in joined:
        assert joined == whole.message.content
    streamed = []
    for chunk in client.chat.completions.create(
        **common, temperature=0, logprobs=True, top_logprobs=4, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed += chunk.choices[0].logprobs.content
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=TOL)
    plain = client.chat.completions.create(**common, temperature=0).choices[0]
    assert plain.logprobs is None and plain.message.content == whole.message.content


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("completions", {"prompt": PROMPT, "logprobs": 21}, "logprobs"),
        ("completions", {"prompt": PROMPT, "logprobs": True}, "logprobs"),
        ("completions", {"prompt": PROMPT, "top_logprobs": 2}, "top_logprobs"),
        ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("chat/completions", {"logprobs": 3}, "logprobs"),
    ],
)
def test_logprobs_bounds_are_400_naming_the_field(url, path, body, param):
    if path.startswith("chat"):
        body = {"messages": [{"role": "user", "content": "hi"}], **body}
    status, answer = http_json(f"{url}/{path}", {"model": MODEL, "max_tokens": 2, **body})
    assert status == 400, answer
    assert answer["error"]["param"] == param and param in answer["error"]["message"]


# --- the gauges an inference gateway reads -----------------------------------------------------

GAUGES = (
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
)


@pytest.fixture(scope="module")
def scrape() -> Iterator[Callable[[], dict[tuple[str, tuple[tuple[str, str], ...]], float]]]:
    """The router's ``/metrics`` (this process's registry, as ``serve_metrics`` serves it),
    read over HTTP: (sample name, labels) → value."""
    server, thread = start_http_server(0, addr="127.0.0.1")
    address = f"http://127.0.0.1:{server.server_port}/metrics"

    def read() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(address, timeout=10) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    yield read
    server.shutdown()
    thread.join(timeout=5)


def wait_for(scrape: Callable[[], dict], want: dict[str, float], timeout_s: float = 10) -> None:
    """Scrape until every gauge in ``want`` reads its value (the router polls the verifiers'
    slots every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {name: scrape().get((name, ())) for name in want}
        if seen == want:
            return
        assert time.monotonic() < deadline, f"gauges {seen}, expected {want}"
        time.sleep(0.05)


def test_gateway_gauges_follow_the_queue_and_the_slots(pipeline, scrape):
    """Another client holds the verifier's only slot: the router's first request is admitted
    (running, waiting for the slot to come free), the second waits in the queue, and the KV
    cache reads full. Once the slot is freed both finish and the gauges fall back."""
    wait_for(scrape, dict.fromkeys(GAUGES, 0.0))
    assert pipeline.router_deps.admission.capacity() == 1
    release = threading.Event()

    def hold() -> Iterator[verifier_pb2.VerifyRequest]:
        opening = verifier_pb2.OpenSequence(prompt_token_ids=[1, 2, 3], seed=1)
        yield verifier_pb2.VerifyRequest(open=opening)
        release.wait(30)

    channel = grpc.insecure_channel(pipeline.address("verifier"))
    held = verifier_pb2_grpc.VerifierStub(channel).Verify(hold())
    next(held)  # opened: the slot is taken
    done: list[list[int]] = []
    clients = [
        threading.Thread(target=lambda: done.append(generate(pipeline, max_tokens=4)[0]))
        for _ in range(2)
    ]
    try:
        for client_thread in clients:
            client_thread.start()
        busy = {
            "vllm:num_requests_running": 1.0,
            "vllm:num_requests_waiting": 1.0,
            "vllm:kv_cache_usage_perc": 1.0,
            "vllm:gpu_cache_usage_perc": 1.0,
        }
        wait_for(scrape, busy)
    finally:
        release.set()
        list(held)
        channel.close()
        for client_thread in clients:
            client_thread.join(timeout=30)
    assert len(done) == 2 and all(done)
    wait_for(scrape, dict.fromkeys(GAUGES, 0.0))
    samples = scrape()
    assert samples[("specdec_num_requests_waiting", ())] == 0.0  # specdec's own names stay


def test_http_requests_are_counted(url, client, scrape):
    def count(status: str) -> float:
        return scrape().get(("specdec_requests_total", (("status", status),)), 0.0)

    ok, invalid = count("OK"), count("INVALID_ARGUMENT")
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, stream=True))
    status, _ = http_json(f"{url}/completions", {"prompt": PROMPT, "logprobs": 99})
    assert status == 400
    assert count("OK") == ok + 2
    assert count("INVALID_ARGUMENT") == invalid + 1


def test_metrics_on_the_http_port(url):
    """The endpoint picker scrapes the pool's target port (the HTTP one) by default."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert set(GAUGES) <= names and "specdec_requests_total" in names
