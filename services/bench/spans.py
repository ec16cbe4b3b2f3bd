"""Where a round's time goes, from the pipeline's own OpenTelemetry spans.

The bench installs an in-memory span processor in its process (where a self-started pipeline
runs). The router's ``specdec.generate`` span has one ``round`` event per round (k, proposed,
accepted, draft_ns, verify_ns); the verifier's ``specdec.verify`` span has one ``step`` event per
round (verify_ns, queue_ns). A round's wall time is the gap between consecutive ``round`` events;
what draft, verify and the verifier's queue do not explain is network, serialization and the
router's own scheduling. The first round of each request (the prefill) is left out.
Non-goals: exporting traces (``OTEL_TRACES_EXPORTER`` does that), spans of a remote router.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from specdec.bench.systems import system_of

ROUTER_SPAN, VERIFIER_SPAN = "specdec.generate", "specdec.verify"


class SpanCollector(SpanProcessor):
    """Keeps the ended spans whose ``specdec.request_id`` starts with ``prefix``."""

    def __init__(self, prefix: str = "lat/") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        rid = (span.attributes or {}).get("specdec.request_id")
        if isinstance(rid, str) and rid.startswith(self.prefix):
            with self._lock:
                self.spans.append(span)

    def named(self, name: str) -> list[ReadableSpan]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def wait(self, requests: int, timeout_s: float = 10.0) -> None:
        """Until router and verifier spans of ``requests`` requests have ended (streams close
        a little after the client has its last response)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if min(len(self.named(ROUTER_SPAN)), len(self.named(VERIFIER_SPAN))) >= requests:
                return
            time.sleep(0.05)


def install_collector(prefix: str = "lat/") -> SpanCollector | None:
    """Add a collector to this process's SDK tracer provider (installing one if there is none);
    None when another kind of provider is installed."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())  # refused (with a warning) if one is set
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        return None
    collector = SpanCollector(prefix)
    provider.add_span_processor(collector)
    return collector


def _system(span: ReadableSpan) -> str:
    return system_of(str((span.attributes or {}).get("specdec.request_id", "")))


def _events(span: ReadableSpan, name: str) -> list[Any]:
    return sorted((e for e in span.events if e.name == name), key=lambda e: e.timestamp)


def rounds_by_system(collector: SpanCollector) -> dict[str, list[tuple[int, int]]]:
    """(proposed, accepted) of every round, per system."""
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for span in collector.named(ROUTER_SPAN):
        for e in _events(span, "round"):
            out[_system(span)].append(
                (int(e.attributes["proposed"]), int(e.attributes["accepted"]))
            )
    return dict(out)


def round_breakdown(collector: SpanCollector) -> dict[str, dict[str, float]]:
    """Per system: mean milliseconds per round (after the first) of each part, and the count."""
    verifier = {
        (span.attributes or {}).get("specdec.request_id"): _events(span, "step")
        for span in collector.named(VERIFIER_SPAN)
    }
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for span in collector.named(ROUTER_SPAN):
        rounds = _events(span, "round")
        steps = verifier.get((span.attributes or {}).get("specdec.request_id"), [])
        s = sums[_system(span)]
        for i in range(1, len(rounds)):
            a = rounds[i].attributes
            s["rounds"] += 1
            s["round_ms"] += (rounds[i].timestamp - rounds[i - 1].timestamp) / 1e6
            s["draft_ms"] += a["draft_ns"] / 1e6
            s["verify_ms"] += a["verify_ns"] / 1e6
            if len(steps) == len(rounds):  # one verify step per round (no failover)
                s["verifier_queue_ms"] += steps[i].attributes["queue_ns"] / 1e6
            s["tokens"] += a["accepted"] + 1
    out = {}
    for system, s in sums.items():
        n = s["rounds"]
        if not n:
            continue
        row = {
            key: s[key] / n for key in ("round_ms", "draft_ms", "verify_ms", "verifier_queue_ms")
        }
        row["other_ms"] = (
            row["round_ms"] - row["draft_ms"] - row["verify_ms"] - row["verifier_queue_ms"]
        )
        row["tokens_per_round"] = s["tokens"] / n
        row["rounds"] = n
        out[system] = row
    return out
