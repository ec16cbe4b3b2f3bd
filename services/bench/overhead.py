"""Overhead mode: what the split itself costs per round, on a model that costs almost nothing.

A random model of one layer and width 64 (made here, in a temporary folder, with the target's
tokenizer) is both target and draft: its steps cost a fraction of a millisecond, so a round's
time is mostly overhead. The pipeline runs as separate processes, as ``specdec up`` starts
them; the engine runs the same model in this process, with as many torch threads as the
verifier has. Systems take turns request by request. Per request, ms/round = the client's wall
time ÷ rounds; p50 and p99 are over requests; the overhead is pipeline minus in-process, at
k = 0 and at k = 4 (draft-ahead on and off: the draft is as slow as the target here, so ahead
proposals rarely arrive in time, and k = 4 mostly measures the round trip to the draft).
Non-goals: a realistic model (latency mode is that).
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from specdec.bench.stats import percentile
from specdec.bench.systems import (
    IN_PROCESS,
    InProcess,
    System,
    pin_client,
    pipeline_system,
    request_id,
)
from specdec.core.model_config import load_config
from specdec.router.redis_server import free_loopback_port
from specdec.up import start_services
from specdec.v1 import generation_pb2_grpc

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PAIRS = (  # (label, pipeline system, in-process system)
    ("k = 0", "pipeline k=0", "in-process target-only"),
    ("k = 4", "pipeline k=4", "in-process k=4"),
    ("k = 4, draft-ahead off", "pipeline k=4 ahead=off", "in-process k=4"),
)


def make_tiny(target: str, folder: Path, seed: int = 0) -> Path:
    """A random one-layer model with the target's vocabulary and tokenizer, in ``folder``."""
    import torch

    from specdec.engine.checkpoint import save_model
    from specdec.engine.model import DecoderModel

    cfg = dataclasses.replace(load_config(target), **TINY, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = DecoderModel(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    save_model(model, folder, torch.float32)
    for name in TOKENIZER_FILES:
        if (Path(target) / name).is_file():
            shutil.copy(Path(target) / name, folder / name)
    return folder


def _ms_per_round(run: Any) -> float:
    rounds = run.counts.rounds if run.counts is not None else len(run.token_ids)
    return 1e3 * run.elapsed_s / max(rounds, 1)


def run_overhead(
    target: str,
    prompt: list[int],
    requests: int,
    max_tokens: int,
    log_dir: Path,
    tick: Callable[[str], None] = lambda _name: None,
) -> dict[str, Any]:
    """Measure every pair of ``PAIRS`` over ``requests`` requests each."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tiny = str(make_tiny(target, Path(tmp) / "tiny"))
        address = f"127.0.0.1:{free_loopback_port()}"
        services = start_services(tiny, tiny, address, log_dir=log_dir)
        threads = torch.get_num_threads()
        torch.set_num_threads(len(services.layout.verifier or {0}))
        channel = grpc.insecure_channel(address)
        try:
            stub = generation_pb2_grpc.GenerationStub(channel)
            context = len(prompt) + max_tokens + 1
            client = frozenset(services.layout.router or ())
            systems: list[System] = [
                pipeline_system(stub, max_tokens, k=0, cpus=client),
                pipeline_system(stub, max_tokens, k=4, cpus=client),
                pipeline_system(stub, max_tokens, k=4, ahead=False, cpus=client),
                *InProcess(tiny, tiny, context).systems([4], max_tokens),
            ]
            times = _measure(systems, prompt, requests, tick)
            breakdown = {s.name: _breakdown(s, prompt) for s in systems if s.kind != IN_PROCESS}
        finally:
            channel.close()
            torch.set_num_threads(threads)
            services.stop()
    return _summary(times, breakdown, services.layout.describe(), requests, max_tokens)


def _measure(
    systems: list[System], prompt: list[int], requests: int, tick: Callable[[str], None]
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {s.name: [] for s in systems}
    for system in systems:  # warm-up
        pin_client(system.cpus)
        system.run(prompt, request_id("overhead-warmup", system.name))
    for i in range(requests):
        for j in range(len(systems)):
            system = systems[(i + j) % len(systems)]
            pin_client(system.cpus)
            times[system.name].append(
                _ms_per_round(system.run(prompt, request_id("overhead", system.name, i)))
            )
        tick("overhead")
    pin_client(None)
    return times


def _breakdown(system: System, prompt: list[int]) -> dict[str, float]:
    """Mean µs per round of each part of one request's critical path, from its stats."""
    pin_client(system.cpus)
    run = system.run(prompt, request_id("overhead-parts", system.name))
    t = run.counts
    assert t is not None
    n = max(t.rounds, 1)
    return {
        "round_us": 1e6 * run.elapsed_s / n,
        "draft_us": t.draft_ns / n / 1e3,
        "verify_forward_us": t.verify_forward_ns / n / 1e3,
        "verify_other_us": (t.verify_service_ns - t.verify_forward_ns - t.verify_queue_ns)
        / n
        / 1e3,
        "network_us": t.network_ns / n / 1e3,
        "router_us": t.router_ns / n / 1e3,
        "ahead_hits": t.ahead_hits,
        "ahead_misses": t.ahead_misses,
    }


def _summary(
    times: dict[str, list[float]],
    breakdown: dict[str, dict[str, float]],
    layout: str,
    requests: int,
    max_tokens: int,
) -> dict[str, Any]:
    systems = {
        name: {"p50_ms": statistics.median(v), "p99_ms": percentile(v, 0.99), "samples": len(v)}
        for name, v in times.items()
    }
    pairs = []
    for label, pipe, inproc in PAIRS:
        p, q = systems[pipe], systems[inproc]
        pairs.append(
            {
                "label": label,
                "pipeline": pipe,
                "in_process": inproc,
                "overhead_p50_ms": p["p50_ms"] - q["p50_ms"],
                "overhead_p99_ms": p["p99_ms"] - q["p99_ms"],
            }
        )
    return {
        "model": "random, 1 layer, width 64 (target and draft)",
        "layout": layout,
        "requests": requests,
        "max_tokens": max_tokens,
        "systems": systems,
        "pairs": pairs,
        "breakdown": breakdown,
    }
