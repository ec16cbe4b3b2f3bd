"""Prometheus metrics of the three services, with the names users know from vLLM.

Each service exposes ``/metrics`` on its own port (``--metrics-port``). The router counts
speculation (drafts, draft tokens, accepted tokens, accepted per position), latencies (time to
first token, inter-token latency), the depth it chose, the load guard's epochs by arm,
request outcomes (gRPC and HTTP alike, by gRPC status name), and its admission queue (requests
waiting for a verifier slot, and how long each waited, like vLLM's ``num_requests_waiting`` and
``request_queue_time_seconds``); draft and verifier report their queue depth and KV-cache slots
in use.

The router also exports, under vLLM's own names, the gauges the Gateway API Inference
Extension's endpoint picker scrapes by default: ``vllm:num_requests_waiting`` (in the admission
queue), ``vllm:num_requests_running`` (generating) and ``vllm:kv_cache_usage_perc`` (a fraction
0-1: KV-cache slots in use ÷ slots, over the verifiers the router knows; older pickers read the
same value as ``vllm:gpu_cache_usage_perc``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

NUM_DRAFTS = Counter("specdec_spec_decode_num_drafts", "Speculation rounds that drafted tokens")
NUM_DRAFT_TOKENS = Counter("specdec_spec_decode_num_draft_tokens", "Draft tokens proposed")
NUM_ACCEPTED_TOKENS = Counter(
    "specdec_spec_decode_num_accepted_tokens", "Draft tokens accepted by the verifier"
)
ACCEPTED_PER_POS = Counter(
    "specdec_spec_decode_num_accepted_tokens_per_pos",
    "Accepted draft tokens by position in the round",
    ["position"],
)
TTFT = Histogram(
    "specdec_time_to_first_token_seconds",
    "Time to first token",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ITL = Histogram(
    "specdec_inter_token_latency_seconds",
    "Time between streamed tokens",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
)
AHEAD = Counter(
    "specdec_draft_ahead_rounds",
    "Rounds with draft-ahead on, by whether their proposal was ready (hit) or drafted on demand",
    ["outcome"],
)
DEPTH = Histogram(
    "specdec_speculation_depth", "Speculation depth k chosen per round", buckets=tuple(range(17))
)
GUARD_EPOCHS = Counter(
    "specdec_load_guard_epochs",
    "Load-guard epochs by arm: speculate (the policy picks k) or plain (k = 0)",
    ["arm"],
)
REQUESTS = Counter("specdec_requests", "Finished requests by gRPC status", ["status"])
QUEUE_WAITING = Gauge(
    "specdec_num_requests_waiting", "Requests waiting in the router's queue for a verifier slot"
)
QUEUE_TIME = Histogram(
    "specdec_request_queue_time_seconds",
    "Time a request waited in the router's queue for a verifier slot",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# The endpoint picker's names (vLLM's).
GATEWAY_WAITING = Gauge(
    "vllm:num_requests_waiting", "Requests waiting in the router's queue for a verifier slot"
)
GATEWAY_RUNNING = Gauge("vllm:num_requests_running", "Requests generating through this router")
GATEWAY_KV_USAGE = Gauge(
    "vllm:kv_cache_usage_perc",
    "KV-cache usage, 0-1: slots in use over slots, on the verifiers this router knows",
)
GATEWAY_GPU_CACHE_USAGE = Gauge(
    "vllm:gpu_cache_usage_perc", "The same as vllm:kv_cache_usage_perc (older pickers read it)"
)
QUEUE_DEPTH = Gauge("specdec_queue_depth", "Work items waiting for a batched forward", ["role"])
SLOTS_IN_USE = Gauge("specdec_kv_slots_in_use", "KV-cache slots held by active sequences", ["role"])


def set_kv_usage(fraction: float) -> None:
    """KV-cache usage (0-1) under both of the picker's names."""
    GATEWAY_KV_USAGE.set(fraction)
    GATEWAY_GPU_CACHE_USAGE.set(fraction)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` over HTTP on ``host:port`` (port 0 or less: off); loopback unless
    told otherwise (a cluster passes ``--metrics-host 0.0.0.0`` for Prometheus)."""
    if port > 0:
        start_http_server(port, addr=host)
