"""The router's OpenAI-compatible HTTP face, end to end: real servers on loopback, the real
``openai`` client (sync and async), raw HTTP for the SSE framing and the error shapes."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from specdec.router import app as router_app
from specdec.router.redis_server import free_loopback_port
from specdec.serving.auth import hash_key
from specdec.v1 import generation_pb2
from tests.fixtures import HTTP_MODEL, HttpPipeline

pytestmark = pytest.mark.service

MODEL = HTTP_MODEL
KEY = "sk-test-key"
PROMPT = "def add(a, b):\n"


@pytest.fixture(scope="module")
def pipeline(model_dir: Path) -> Iterator[HttpPipeline]:
    p = HttpPipeline(str(model_dir / "target"), str(model_dir / "draft_close")).start()
    yield p
    p.close()


def base_url(running: router_app.RouterRunning) -> str:
    return f"http://127.0.0.1:{running.http_port}/v1"


@pytest.fixture(scope="module")
def url(pipeline: HttpPipeline) -> str:
    return base_url(pipeline.servers["router"])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


@dataclass
class Reply:
    status_code: int
    headers: Any
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    """One plain HTTP exchange (the standard library's client: no OpenAI client in between)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data, {"Content-Type": "application/json", **(headers or {})}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read().decode())


def grpc_text(pipeline: HttpPipeline, **fields: Any) -> str:
    responses = pipeline.client().Generate(generation_pb2.GenerateRequest(**fields))
    return "".join(r.text for r in responses)


def test_greedy_completion_equals_grpc_generate(pipeline, client):
    expected = grpc_text(pipeline, prompt_text=PROMPT, max_tokens=24)
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    assert out.choices[0].text == expected
    assert out.object == "text_completion" and out.model == MODEL
    usage = out.usage
    assert usage.completion_tokens == 24 or out.choices[0].finish_reason == "stop"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    spec = usage.model_extra["specdec"]
    assert spec["rounds"] > 0 and spec["draft_tokens"] > 0
    assert spec["acceptance_rate"] == pytest.approx(spec["accepted_tokens"] / spec["draft_tokens"])
    assert spec["mean_acceptance_length"] >= 1 and spec["queue_ms"] >= 0


def test_token_id_prompts_and_n_give_one_choice_each(pipeline, client):
    ids = pipeline.router_deps.tokenizer.encode(PROMPT)
    expected = grpc_text(pipeline, prompt_text=PROMPT, max_tokens=8)
    out = client.completions.create(model=MODEL, prompt=[ids, ids], max_tokens=8, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    assert [c.text for c in out.choices] == [expected, expected]
    single = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    assert single.choices[0].text == expected
    assert out.usage.prompt_tokens == 2 * len(ids)


def test_n_seeded_sampling_is_reproducible(client):
    # Seeded sampling repeats for a fixed sequence of depths: a fixed k.
    fixed = {"specdec": {"k": 3}}

    def sample(seed: int, n: int) -> list[str]:
        out = client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=12,
            temperature=1.0,
            seed=seed,
            n=n,
            extra_body=fixed,
        )
        assert len(out.choices) == n
        return [c.text for c in out.choices]

    first = sample(5, 2)
    assert sample(5, 2) == first
    assert sample(6, 1) == first[1:]  # choice j samples with seed + j


def test_stop_string_cuts_the_text(pipeline, client):
    full = grpc_text(pipeline, prompt_text=PROMPT, max_tokens=24)
    stop = full[3:5]
    assert stop and stop in full
    out = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop]
    )
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_chat_with_the_demo_template(client):
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a function."}],
        max_completion_tokens=10,
        temperature=0,
    )
    choice = out.choices[0]
    assert out.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason in {"stop", "length"}
    assert out.usage.prompt_tokens > 5  # the template's markers are in the prompt


def test_streamed_chat_equals_whole_chat(client):
    messages = [{"role": "user", "content": "def f():"}]
    whole = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        whole.usage.completion_tokens
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_async_client_streams_completions(url, pipeline):
    expected = grpc_text(pipeline, prompt_text=PROMPT, max_tokens=16)

    async def run() -> tuple[str, list[str | None]]:
        async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as aclient:
            stream = await aclient.completions.create(
                model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, stream=True
            )
            chunks = [c async for c in stream]
        return "".join(c.choices[0].text for c in chunks), [
            c.choices[0].finish_reason for c in chunks
        ]

    text, finishes = asyncio.run(run())
    assert text == expected
    assert finishes[-1] in {"stop", "length"} and set(finishes[:-1]) == {None}


def test_sse_framing_ends_with_done(url):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "stream": True}
    response = http("POST", f"{url}/completions", body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    raw = response.text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)


def test_models_and_health(url):
    models = http("GET", f"{url}/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    health = http("GET", url.removesuffix("/v1") + "/health")
    assert health.status_code == 200


def error_of(response: Reply, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"prompt": "x", "max_tokens": 300}, "prompt", "maximum context length is 256 tokens"),
        ({"prompt": "x", "temperature": 200}, "temperature", "must be in [0, 100]"),
        ({"prompt": "x", "logprobs": 21}, "logprobs", "must be in [0, 20]"),
        ({"prompt": "x", "min_p": 0.1}, "min_p", "not supported"),
        ({"prompt": "x", "echo": True}, "echo", "echo"),
        ({"prompt": "x", "ignore_eos": True}, "ignore_eos", "not supported"),
        ({"prompt": [1, 99999]}, "prompt", "outside the vocabulary"),
        ({"prompt": "x", "specdec": {"k": 99}}, "specdec.k", "must be in"),
        ({"prompt": "x", "n": 0}, "n", "greater than or equal to 1"),
        ({"prompt": "x", "stop": [""]}, "stop", "1-64 characters"),
    ],
)
def test_bad_requests_are_400_naming_the_field(url, body, param, words):
    error = error_of(http("POST", f"{url}/completions", {"model": MODEL, **body}), 400)
    assert error["param"] == param and words in error["message"]
    assert error["type"] == "invalid_request_error"


def test_context_overflow_is_worded_like_vllm(url):
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": MODEL, "messages": messages, "max_tokens": 250}
    response = http("POST", f"{url}/chat/completions", body)
    message = error_of(response, 400)["message"]
    assert message.startswith("This model's maximum context length is 256 tokens. However, you")
    assert "in the messages, 250 in the completion). Please reduce the length" in message


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    assert caught.value.body["code"] == "model_not_found"


@pytest.fixture(scope="module")
def locked(pipeline: HttpPipeline, model_dir: Path, tmp_path_factory) -> Iterator[str]:
    """A second router on the same replicas: API keys, no queue, no chat template."""
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"tester:{hash_key(KEY)}\n")
    cfg = router_app.RouterConfig(
        model=str(model_dir / "target"),
        verifiers=(pipeline.address("verifier"),),
        drafts=(pipeline.address("draft"),),
        listen="127.0.0.1:0",
        max_context_tokens=256,
        api_keys_file=str(keys),
        queue_max=0,
        http_listen="127.0.0.1:0",
    )
    running, deps = pipeline.loop.run(router_app.start(cfg))
    yield base_url(running)
    pipeline.loop.run(router_app.stop(running, deps, 0))


def test_api_keys_are_checked_like_grpc(locked):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=locked, api_key="wrong", max_retries=0).models.list()
    error = error_of(http("GET", f"{locked}/models"), 401)
    assert "Authorization: Bearer" in error["message"]
    client = openai.OpenAI(base_url=locked, api_key=KEY, max_retries=0)
    assert client.models.list().data[0].id == "target"  # the folder's name
    assert http("GET", locked.removesuffix("/v1") + "/health").status_code == 200  # no key needed


def test_chat_without_template_says_to_pass_one(locked):
    client = openai.OpenAI(base_url=locked, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="target", messages=[{"role": "user", "content": "x"}])
    assert "--chat-template" in caught.value.body["message"]


def test_full_queue_is_429_with_retry_after(locked):
    # 8 verifier slots and no queue: the ninth choice of one request is refused.
    body = {"model": "target", "prompt": PROMPT, "max_tokens": 4, "n": 9}
    response = http("POST", f"{locked}/completions", body, {"Authorization": f"Bearer {KEY}"})
    assert error_of(response, 429)["code"] == "queue_full"
    assert int(response.headers["retry-after"]) >= 1


def test_no_verifier_is_503(pipeline, model_dir):
    cfg = router_app.RouterConfig(
        model=str(model_dir / "target"),
        verifiers=(f"127.0.0.1:{free_loopback_port()}",),  # nothing listens there
        listen="127.0.0.1:0",
        max_context_tokens=256,
        http_listen="127.0.0.1:0",
    )
    running, deps = pipeline.loop.run(router_app.start(cfg))
    try:
        url = base_url(running)
        assert http("GET", url.removesuffix("/v1") + "/health").status_code == 503
        body = {"prompt": PROMPT, "max_tokens": 4}
        response = http("POST", f"{url}/completions", body)
        assert error_of(response, 503)["type"] == "server_error"
        assert "Retry-After" in response.headers
    finally:
        pipeline.loop.run(router_app.stop(running, deps, 0))


def test_non_loopback_http_needs_tls_or_insecure(pipeline, model_dir):
    cfg = router_app.RouterConfig(
        model=str(model_dir / "target"),
        verifiers=(pipeline.address("verifier"),),
        listen="127.0.0.1:0",
        http_listen="0.0.0.0:0",
    )
    with pytest.raises(Exception, match="--insecure"):
        pipeline.loop.run(router_app.start(cfg))


def test_client_going_away_mid_stream_frees_its_slots(pipeline, url):
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "stream": True, "n": 2})
    port = int(url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        received = b""
        while b"data: " not in received:  # until the stream has begun; then hang up
            piece = conn.recv(65536)
            assert piece, received
            received += piece
    assert pipeline.wait_idle() == 0
    admission = pipeline.router_deps.admission
    assert admission.admitted == 0


def test_chat_template_from_tokenizer_config(tmp_path):
    from specdec.core.errors import InvalidRequest
    from specdec.router.http.chat_template import ChatTemplate

    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] | tojson }}{% if loop.index == 2 %}{% break %}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}{{ eos_token }}"
    )
    config = {"chat_template": [{"name": "default", "template": template}], "bos_token": "<s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": "</s>"}})
    )
    chat = ChatTemplate.load(tmp_path)
    assert chat is not None
    messages = [{"role": "user", "content": "<a>"}, {"role": "assistant", "content": "é"}]
    rendered = chat.render([*messages, {"role": "user", "content": "dropped"}])
    assert rendered == '<s>[user]"<a>"[assistant]"é"[assistant]</s>'
    with pytest.raises(InvalidRequest, match="no system role"):
        chat.render([{"role": "system", "content": "x"}])
    (tmp_path / "evil.jinja").write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequest, match="failed"):
        ChatTemplate.load(tmp_path, tmp_path / "evil.jinja").render(messages)
    assert ChatTemplate.load(tmp_path / "nothing-here") is None


def test_https_with_the_routers_certificate(pipeline, model_dir, tmp_path):
    import ssl

    from specdec.serving.server import Transport
    from specdec.serving.tls import ServerTLS, loopback_pki

    pki = loopback_pki(tmp_path)
    cfg = router_app.RouterConfig(
        model=str(model_dir / "target"),
        verifiers=(pipeline.address("verifier"),),
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        transport=Transport(tls=ServerTLS(pki.server_cert, pki.server_key)),
    )
    running, deps = pipeline.loop.run(router_app.start(cfg))
    try:
        url = f"https://127.0.0.1:{running.http_port}/health"
        context = ssl.create_default_context(cafile=pki.ca)
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            assert response.status == 200
        with pytest.raises(OSError):  # no plaintext on the TLS port
            urllib.request.urlopen(url.replace("https", "http"), timeout=10)
    finally:
        pipeline.loop.run(router_app.stop(running, deps, 0))


def test_an_error_mid_stream_is_an_error_event_then_done(model_dir):
    """A verifier lost mid-stream (the only one): the answer has begun, so the error comes as
    an event with OpenAI's error object, and the stream still ends with [DONE]."""
    alone = HttpPipeline(str(model_dir / "target"), str(model_dir / "draft_close")).start()
    try:
        port = alone.servers["router"].http_port  # type: ignore[attr-defined]
        body = json.dumps({"prompt": PROMPT, "max_tokens": 200, "stream": True})
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
            )
            received = conn.recv(65536)
            while b"data: " not in received:
                received += conn.recv(65536)
            alone.stop_server("verifier")
            while piece := conn.recv(65536):
                received += piece
        # one SSE event per HTTP chunk: its data line is whole
        events = re.findall(r"^data: (.*)$", received.decode(), flags=re.MULTILINE)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "unavailable" and error["type"] == "server_error"
        assert all("choices" in json.loads(e) for e in events[:-2])
    finally:
        alone.close()


def test_up_serves_http_by_default_and_refuses_a_busy_port():
    from specdec.cli import DEFAULT_HTTP_ADDR, build_parser
    from specdec.core.errors import Unavailable
    from specdec.up import up

    assert build_parser().parse_args(["up"]).http_listen == DEFAULT_HTTP_ADDR
    assert build_parser().parse_args(["up", "--no-http"]).no_http
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(Unavailable, match="--no-http"):
            up("no-target", None, "127.0.0.1:0", None, None, http_listen=address)
