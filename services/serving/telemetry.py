"""OpenTelemetry for the three services: one trace per request across router, draft, verifier.

Configured by the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or
``none``; default ``none`` so a local run prints nothing), ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the
other ``OTEL_EXPORTER_OTLP_*`` settings (read by the exporter itself), ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES``. Trace context travels in gRPC metadata (W3C ``traceparent``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

log = logging.getLogger("specdec.telemetry")


def setup_tracing(default_service_name: str) -> TracerProvider | None:
    """Install a tracer provider as the environment asks; None when tracing is off."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return None
    resource = Resource.create({"service.name": default_service_name})
    if "OTEL_SERVICE_NAME" in os.environ:  # Resource.create reads it; the default must not win
        resource = Resource.create()
    provider = TracerProvider(resource=resource)
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console, none)", exporter_name)
        return None
    trace.set_tracer_provider(provider)
    return provider


def inject_metadata(span: trace.Span) -> tuple[tuple[str, str], ...]:
    """``span``'s trace context as gRPC metadata for an outgoing call (it becomes the parent)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> context.Context:
    """The caller's trace context from incoming gRPC metadata."""
    carrier: Mapping[str, str] = {
        k: v.decode() if isinstance(v, bytes) else v for k, v in (metadata or ())
    }
    return propagate.extract(carrier)
