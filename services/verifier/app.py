"""Wiring of a verifier replica: load the target, warm up, serve, turn health SERVING."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import torch

from specdec.engine.checkpoint import load_model
from specdec.engine.compiled import compile_by_default
from specdec.engine.local import DTYPES, default_device, default_dtype
from specdec.engine.runner import ModelRunner
from specdec.engine.threads import set_cpu_threads
from specdec.replica.app import model_name, serve_replica, warm_up
from specdec.replica.stream import DEFAULT_IDLE_S, StreamGuard
from specdec.serving.server import Running, Transport, run_service
from specdec.v1 import verifier_pb2, verifier_pb2_grpc
from specdec.verifier import tensor_parallel
from specdec.verifier.core import VerifierCore
from specdec.verifier.server import VerifierServicer
from specdec.verifier.tensor_parallel import TensorParallel

log = logging.getLogger("specdec.verifier")


@dataclass(frozen=True)
class VerifierConfig:
    model: str  # target model folder (Hugging Face format)
    listen: str = "127.0.0.1:50052"  # host:port; port 0 picks a free one
    device: str | None = None  # cpu, cuda, cuda:1 ...; default: cuda when present
    slots: int = 16  # KV-cache slots: concurrent sequences (and parked sessions)
    max_seq_len: int = 2048  # tokens per slot (capped by the model's context)
    metrics_port: int = 0  # Prometheus /metrics on this port; 0: off
    metrics_host: str = "127.0.0.1"  # address /metrics binds
    threads: int | None = None  # CPU threads for torch; None: the container's CPU quota
    dtype: str | None = None  # float32, bfloat16, float16; None: fp32 on CPU, bf16 on GPU
    compile: bool | None = None  # torch.compile the step forward; None: SPECDEC_COMPILE
    max_batch_tokens: int = 8192  # tokens per batched forward
    transport: Transport = field(default_factory=Transport)  # TLS / mTLS, health port, reflection
    stream_idle_s: float = DEFAULT_IDLE_S  # a Verify stream silent this long is ended
    max_streams_per_peer: int = 0  # Verify streams one connection may hold; 0: no cap
    tp: TensorParallel = field(default_factory=TensorParallel)  # tensor-parallel ranks


def build_core(cfg: VerifierConfig) -> VerifierCore:
    device = cfg.device or default_device()
    log.info("loading target %s on %s (%d CPU threads)", cfg.model, device, torch.get_num_threads())
    model = load_model(cfg.model, DTYPES[cfg.dtype] if cfg.dtype else default_dtype(device), device)
    max_len = min(cfg.max_seq_len, model.config.max_position_embeddings)
    compile = compile_by_default(cfg.compile)
    runner = ModelRunner(model, num_slots=cfg.slots, max_seq_len=max_len, compile=compile)
    warm_up(runner)
    return VerifierCore(runner, cfg.max_batch_tokens)


async def start(cfg: VerifierConfig, core: VerifierCore | None = None) -> Running:
    leader = None
    if core is None and cfg.tp.enabled:
        leader = await asyncio.to_thread(_start_tp, cfg)
        core = VerifierCore(leader.runner, cfg.max_batch_tokens)
    core = core or await asyncio.to_thread(build_core, cfg)
    servicer = VerifierServicer(core, model_name(cfg.model))
    service = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"]
    running = await serve_replica(
        "verifier",
        cfg.listen,
        core,
        servicer,
        verifier_pb2_grpc.add_VerifierServicer_to_server,
        service,
        cfg.transport,
        StreamGuard(cfg.stream_idle_s, cfg.max_streams_per_peer),
    )
    if leader is not None:
        tensor_parallel.watch(leader, running)
    return running


def _tp_spec(cfg: VerifierConfig) -> tensor_parallel.TPSpec:
    return tensor_parallel.spec(
        cfg.model, cfg.tp, cfg.device, cfg.dtype, cfg.slots, cfg.max_seq_len
    )


def _start_tp(cfg: VerifierConfig) -> tensor_parallel.Leader:
    """Rank 0 of a tensor-parallel target, warmed up (with ``compile``: refused, not ignored)."""
    if compile_by_default(cfg.compile):
        log.warning("--compile is not supported with tensor parallelism; serving eagerly")
    leader = tensor_parallel.start(_tp_spec(cfg))
    warm_up(leader.runner)
    return leader


def main(cfg: VerifierConfig) -> None:
    """The process entry point (``specdec serve verifier``): owns the process-wide torch threads."""
    set_cpu_threads(cfg.threads)
    if cfg.tp.node_rank > 0:  # a worker node of a multi-node group: ranks only, no gRPC
        tensor_parallel.run_follower_node(_tp_spec(cfg))
    run_service("verifier", (cfg.metrics_host, cfg.metrics_port), lambda: start(cfg))
