"""One trace per request across the three services; Prometheus metrics with vLLM's names."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from specdec.local_pipeline import Pipeline
from specdec.router.redis_server import free_loopback_port
from specdec.serving.metrics import serve_metrics
from specdec.v1 import generation_pb2

pytestmark = pytest.mark.service

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process; later tests just export here too
    return exporter


@pytest.fixture(scope="module")
def pipeline(model_dir: Path):
    p = Pipeline(str(model_dir / "target"), str(model_dir / "draft_close")).start()
    yield p
    p.close()


def test_one_request_is_one_trace_with_parented_spans(spans, pipeline):
    spans.clear()
    request = generation_pb2.GenerateRequest(prompt_text="def f(x):", max_tokens=12)
    list(pipeline.client().Generate(request, metadata=(("traceparent", TRACEPARENT),)))
    deadline = time.monotonic() + 5
    while len(spans.get_finished_spans()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)  # the replicas end their spans when their streams close
    by_name = {s.name: s for s in spans.get_finished_spans()}
    root = by_name["specdec.generate"]
    verify, propose = by_name["specdec.verify"], by_name["specdec.propose"]
    assert root.context.trace_id == int(TRACEPARENT.split("-")[1], 16)  # joins the caller's
    assert root.parent.span_id == int(TRACEPARENT.split("-")[2], 16)
    for child in (verify, propose):
        assert child.context.trace_id == root.context.trace_id
        assert child.parent.span_id == root.context.span_id
    assert root.attributes["gen_ai.usage.output_tokens"] == 12
    assert root.attributes["gen_ai.request.model"] == "target"
    rounds = [e for e in root.events if e.name == "round"]
    assert rounds and {"k", "accepted", "verify_ns"} <= set(rounds[0].attributes)
    assert any(e.name == "step" for e in verify.events)


def value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_metrics_count_speculation_latency_and_outcomes(pipeline):
    before = {
        n: value(n)
        for n in (
            "specdec_spec_decode_num_draft_tokens_total",
            "specdec_spec_decode_num_accepted_tokens_total",
            "specdec_time_to_first_token_seconds_count",
        )
    }
    ok_before = value("specdec_requests_total", {"status": "OK"})
    request = generation_pb2.GenerateRequest(
        prompt_text="import os\n",
        max_tokens=16,
        depth_policy=generation_pb2.DEPTH_POLICY_FIXED,
        fixed_depth=3,
    )
    last = list(pipeline.client().Generate(request))[-1]
    drafted = (
        value("specdec_spec_decode_num_draft_tokens_total")
        - before["specdec_spec_decode_num_draft_tokens_total"]
    )
    assert drafted == last.stats.draft_tokens > 0
    accepted = (
        value("specdec_spec_decode_num_accepted_tokens_total")
        - before["specdec_spec_decode_num_accepted_tokens_total"]
    )
    assert accepted == last.stats.accepted_tokens
    assert (
        value("specdec_time_to_first_token_seconds_count")
        == before["specdec_time_to_first_token_seconds_count"] + 1
    )
    assert value("specdec_requests_total", {"status": "OK"}) == ok_before + 1
    assert value("specdec_kv_slots_in_use", {"role": "verifier"}) == 0


def test_metrics_endpoint_serves_the_names(pipeline):
    port = free_loopback_port()
    serve_metrics(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for name in (
        "specdec_spec_decode_num_drafts_total",
        "specdec_spec_decode_num_accepted_tokens_per_pos_total",
        "specdec_inter_token_latency_seconds_bucket",
        "specdec_speculation_depth_bucket",
        "specdec_queue_depth",
        "specdec_kv_slots_in_use",
    ):
        assert name in body
