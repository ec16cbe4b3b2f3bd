"""Wiring of a draft replica: load the draft model (optional), warm up, serve."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import torch

from specdec.draft.core import DraftCore
from specdec.draft.server import DraftServicer
from specdec.engine.checkpoint import load_model
from specdec.engine.compiled import compile_by_default
from specdec.engine.draft_dtype import load_draft
from specdec.engine.local import DTYPES, default_device
from specdec.engine.runner import ModelRunner
from specdec.engine.threads import set_cpu_threads
from specdec.replica.app import model_name, serve_replica, warm_up
from specdec.replica.stream import DEFAULT_IDLE_S, StreamGuard
from specdec.serving.server import Running, Transport, run_service
from specdec.v1 import draft_pb2, draft_pb2_grpc

log = logging.getLogger("specdec.draft")


@dataclass(frozen=True)
class DraftConfig:
    model: str | None  # draft model folder; None serves prompt lookup only
    listen: str = "127.0.0.1:50053"  # host:port; port 0 picks a free one
    device: str | None = None  # cpu, cuda, cuda:1 ...; default: cuda when present
    slots: int = 16  # KV-cache slots: concurrent sequences
    max_seq_len: int = 2048  # tokens per slot (capped by the model's context)
    vocab_size: int | None = None  # the target's vocabulary (drafts stay below it)
    metrics_port: int = 0  # Prometheus /metrics on this port; 0: off
    metrics_host: str = "127.0.0.1"  # address /metrics binds
    threads: int | None = None  # CPU threads for torch; None: the container's CPU quota
    dtype: str | None = None  # float32, bfloat16, float16; None: see load_draft
    compile: bool | None = None  # torch.compile the step forward; None: SPECDEC_COMPILE
    ahead_slots: int = 64  # more slots, for draft-ahead's branches (shared by all sequences)
    transport: Transport = field(default_factory=Transport)  # TLS / mTLS, health port, reflection
    stream_idle_s: float = DEFAULT_IDLE_S  # a Propose stream silent this long is ended
    max_streams_per_peer: int = 0  # Propose streams one connection may hold; 0: no cap


def build_core(cfg: DraftConfig) -> tuple[DraftCore, int]:
    if cfg.model is None:
        return DraftCore(None, cfg.vocab_size, max_seq_len=cfg.max_seq_len), cfg.vocab_size or 0
    device = cfg.device or default_device()
    log.info("loading draft %s on %s (%d CPU threads)", cfg.model, device, torch.get_num_threads())
    model = (
        load_model(cfg.model, DTYPES[cfg.dtype], device)
        if cfg.dtype
        else load_draft(cfg.model, device)
    )
    max_len = min(cfg.max_seq_len, model.config.max_position_embeddings)
    slots = cfg.slots + cfg.ahead_slots
    compile = compile_by_default(cfg.compile)
    runner = ModelRunner(model, num_slots=slots, max_seq_len=max_len, compile=compile)
    warm_up(runner)
    vocab = cfg.vocab_size or runner.vocab_size
    return DraftCore(runner, min(vocab, runner.vocab_size)), vocab


async def start(cfg: DraftConfig) -> Running:
    core, vocab = await asyncio.to_thread(build_core, cfg)
    name = model_name(cfg.model) if cfg.model else "ngram"
    servicer = DraftServicer(core, name, vocab or (1 << 31))
    service = draft_pb2.DESCRIPTOR.services_by_name["Draft"]
    return await serve_replica(
        "draft",
        cfg.listen,
        core,
        servicer,
        draft_pb2_grpc.add_DraftServicer_to_server,
        service,
        cfg.transport,
        StreamGuard(cfg.stream_idle_s, cfg.max_streams_per_peer),
    )


def main(cfg: DraftConfig) -> None:
    """The process entry point (``specdec serve draft``): owns the process-wide torch threads."""
    set_cpu_threads(cfg.threads)
    run_service("draft", (cfg.metrics_host, cfg.metrics_port), lambda: start(cfg))
