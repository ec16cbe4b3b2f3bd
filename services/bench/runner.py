"""One ``specdec bench`` run, start to end: load prompts and models, start (or reach) the
pipeline, measure latency, costs and load, then write ``result.json``, ``REPORT.md`` and plots.

Everything the report shows is measured here, in this run.
Non-goals: comparing with earlier runs; deciding pass or fail (the report shows the bars).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from tqdm import tqdm

from specdec.bench import acceptance, cost, latency, load, machine, plots, report, spans
from specdec.bench.config import BenchConfig
from specdec.bench.hf_peer import HF_ASSISTED, HF_GREEDY, TransformersPeer
from specdec.bench.systems import (
    BASELINE,
    IN_PROCESS,
    PIPELINE,
    InProcess,
    System,
    pipeline_request,
    pipeline_system,
)
from specdec.bench.workloads import PROMPTS_DIR, Prompt, load_workload
from specdec.core.errors import SpecdecError
from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.core.model_config import load_config
from specdec.core.tokenizer import Tokenizer
from specdec.router.load_guard import LoadGuard
from specdec.v1 import generation_pb2_grpc

if TYPE_CHECKING:
    from specdec.local_pipeline import Pipeline

SCHEMA = "specdec.bench/1"


def validate(cfg: BenchConfig) -> None:
    for k in (*cfg.fixed_k, cfg.in_process_k):
        if not 1 <= k <= MAX_SPEC_DEPTH:
            raise SpecdecError(f"--fixed-k/--in-process-k: k must be in 1..{MAX_SPEC_DEPTH}")
    unknown = set((*cfg.policies, cfg.default_policy)) - {"heuristic", "goodput"}
    if unknown:
        raise SpecdecError(f"unknown depth policy {sorted(unknown)[0]!r} (heuristic, goodput)")
    if cfg.max_tokens < 1 or cfg.repeats < 1 or any(n < 1 for n in cfg.concurrency):
        raise SpecdecError("--max-tokens, --repeats and --concurrency must be at least 1")
    for folder in (cfg.target, cfg.draft):
        if not (Path(folder) / "config.json").is_file():
            raise SpecdecError(
                f"{folder}: no model there (make demo-models, or pass --target/--draft)"
            )
    context = load_config(cfg.target).max_position_embeddings
    if cfg.max_tokens > context // 2:
        raise SpecdecError(f"--max-tokens {cfg.max_tokens}: at most half the context ({context})")


def select_prompts(cfg: BenchConfig) -> list[Prompt]:
    """The workload's prompts, workloads alternating, the first ``num_prompts`` of them."""
    folder = Path(cfg.prompts_dir) if cfg.prompts_dir else PROMPTS_DIR
    names = ("code", "prose") if cfg.workload == "all" else (cfg.workload,)
    lists = [load_workload(n, folder) for n in names]
    mixed = [p for group in zip(*lists, strict=False) for p in group]
    mixed += [p for lst in lists for p in lst[min(map(len, lists)) :]]
    return mixed[: cfg.num_prompts] if cfg.num_prompts else mixed


def tokenize(
    prompts: list[Prompt], tokenizer: Tokenizer, max_prompt: int
) -> tuple[list[tuple[Prompt, list[int]]], int]:
    """Token ids per prompt, keeping the last ``max_prompt``; and how many were cut."""
    out, cut = [], 0
    for p in prompts:
        ids = tokenizer.encode(p.text)
        cut += len(ids) > max_prompt
        out.append((p, ids[-max_prompt:]))
    return out, cut


@contextmanager
def router(
    cfg: BenchConfig, context: int
) -> Iterator[tuple[generation_pb2_grpc.GenerationStub, Pipeline | None]]:
    """A stub for ``--addr`` (and None), or for a pipeline started here for the run (and the
    pipeline)."""
    pipe, address = None, cfg.addr
    if not address:
        from specdec.local_pipeline import Pipeline

        slots = max(8, cfg.max_concurrency)  # every load-mode client holds a KV-cache slot
        pipe = Pipeline(cfg.target, cfg.draft, slots=slots, max_context_tokens=context).start()
        address = pipe.address("router")
    channel = grpc.insecure_channel(address)
    try:
        yield generation_pb2_grpc.GenerationStub(channel), pipe
    except grpc.RpcError as exc:  # e.g. no router at --addr, or a prompt it will not take
        raise SpecdecError(f"router at {address}: {exc.code().name}: {exc.details()}") from exc
    finally:
        channel.close()
        if pipe is not None:
            pipe.close()


def quiesce() -> None:
    """Collect garbage now and exempt everything alive from later collections. The pipeline
    shares this process with the models and libraries loaded for the other systems; a full
    collection over that heap stalls a verifier step by ~0.2 s on a small CPU, which would be
    the bench's cost, not the pipeline's."""
    gc.collect()
    gc.freeze()


def _bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True)


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure, then write the result, report and plots into ``cfg.out``; return the result."""
    validate(cfg)
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started, t0 = time.time(), time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    target_cfg = load_config(cfg.target)
    context = target_cfg.max_position_embeddings
    prompts, cut = tokenize(
        select_prompts(cfg), Tokenizer.from_folder(cfg.target), context - cfg.max_tokens - 1
    )
    context = min(context, max(len(ids) for _, ids in prompts) + cfg.max_tokens + 1)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "command": cfg.command,
        "started_unix_s": started,
        "machine": machine.describe(),
        "config": {**asdict(cfg), "context_tokens": context, "prompts_truncated": cut},
        "prompts": [{"id": p.id, "workload": p.workload, "tokens": len(ids)} for p, ids in prompts],
    }
    collector = None if cfg.addr else spans.install_collector()
    in_process = InProcess(cfg.target, cfg.draft, context)
    result["models"] = {
        "target": _model_info(cfg.target, in_process.target.model),
        "draft": _model_info(cfg.draft, in_process.draft.model),
    }
    with router(cfg, context) as (stub, pipe):
        if cfg.latency:
            _latency(cfg, result, stub, prompts, in_process, target_cfg.eos_token_ids, collector)
        if cfg.load:
            _load(cfg, result, stub, [ids for _, ids in prompts], pipe)
    result["headline"] = headline(result, cfg.default_policy)
    result["machine"]["load_average_end"] = machine.load_average()
    result["elapsed_s"] = time.perf_counter() - t0
    result["plots"] = plots.write_all(result, out)
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "REPORT.md").write_text(report.render(result))
    return result


def _model_info(path: str, model: Any) -> dict[str, Any]:
    """Where a model came from, its size, and the dtype it ran in."""
    weight = model.lm_head.weight
    return {
        "path": path,
        "params": sum(p.numel() for p in model.parameters()),
        "dtype": str(weight.dtype).removeprefix("torch."),
    }


def _latency(
    cfg: BenchConfig,
    result: dict[str, Any],
    stub: generation_pb2_grpc.GenerationStub,
    prompts: list[tuple[Prompt, list[int]]],
    in_process: InProcess,
    eos: tuple[int, ...],
    collector: spans.SpanCollector | None,
) -> None:
    """Systems (a)-(d) interleaved; acceptance, efficiency, costs and the round breakdown."""
    systems: list[System] = [pipeline_system(stub, cfg.max_tokens, k=0)]
    systems += [pipeline_system(stub, cfg.max_tokens, k=k) for k in cfg.fixed_k]
    policies = dict.fromkeys((*cfg.policies, cfg.default_policy))  # the headline needs it
    systems += [pipeline_system(stub, cfg.max_tokens, policy=p) for p in policies]
    systems += in_process.systems(cfg.in_process_k, cfg.max_tokens)
    if cfg.hf:
        peer = TransformersPeer(cfg.target, cfg.draft, eos, cfg.hf_assistant_tokens)
        systems += peer.systems(cfg.max_tokens)
        result["transformers"] = peer.settings()
    quiesce()
    with _bar(len(systems) * (1 + len(prompts) * cfg.repeats), "latency") as bar:
        run = latency.run_latency(systems, prompts, cfg.repeats, lambda _n: bar.update())
    summary = latency.summarize(run, systems)
    costs = cost.measure_costs(
        in_process.target, in_process.draft, prompts[0][1], cfg.in_process_k, cfg.cost_repeats
    )
    n_pipeline = sum(s.kind == PIPELINE for s in systems) * len(prompts) * cfg.repeats
    if collector is not None:
        collector.wait(n_pipeline)
    rounds = spans.rounds_by_system(collector) if collector else {}
    result["latency"] = {
        "baseline": BASELINE,
        "reference": "in-process target-only",
        "repeats": cfg.repeats,
        "systems": summary,
        "samples": [
            [x.system, x.prompt_id, x.repeat, x.output_tokens, round(x.elapsed_s, 6)]
            for x in run.samples
        ],
        "sample_fields": ["system", "prompt", "pass", "output_tokens", "elapsed_s"],
    }
    result["cost"] = costs
    result["acceptance"] = {
        name: acceptance.acceptance_summary(
            counts, costs["c"], summary[name]["speedup_vs_target_only"], rounds.get(name)
        )
        for name, counts in run.counts.items()
        if any(counts.depths)  # k = 0 reports stats too, but drafts nothing
    }
    result["profile"] = {
        "pipeline": spans.round_breakdown(collector) if collector else {},
        "in_process": _in_process_round(run, systems, costs),
        "source": "OpenTelemetry spans in this process" if collector else "none (--addr)",
    }
    if HF_ASSISTED in summary:
        name = f"pipeline {cfg.default_policy}"
        result["latency"]["default_vs_hf_assisted"] = latency.paired_ratio(run, name, HF_ASSISTED)
        result["latency"]["hf_assisted_vs_hf_greedy"] = latency.paired_ratio(
            run, HF_ASSISTED, HF_GREEDY
        )
    differing = {n: s["differing_prompts"] for n, s in summary.items()}
    ours = {n: d for n, d in differing.items() if summary[n]["kind"] != "transformers"}
    result["greedy_check"] = {
        "reference": "in-process target-only",
        "differing_prompts": differing,
        "specdec_identical": not any(ours.values()),
        "all_identical": not any(differing.values()),
    }


def _in_process_round(
    run: latency.LatencyRun, systems: list[System], costs: dict[str, Any]
) -> dict[str, Any]:
    """The engine's round without services, for comparison: wall time per round from the
    latency runs (prefill rounds included) and its draft/verify parts from the step costs."""
    out = {}
    for s in systems:
        counts = run.counts.get(s.name)
        if s.kind != IN_PROCESS or counts is None or not counts.rounds:
            continue
        elapsed = sum(x.elapsed_s for x in run.samples if x.system == s.name)
        out[s.name] = {
            "round_ms": 1e3 * elapsed / counts.rounds,
            "draft_ms": 1e3 * costs["draft_step_s"] * (s.k or 0),
            "verify_ms": 1e3 * costs["target_verify_s"],
            "tokens_per_round": counts.output_tokens / counts.rounds,
        }
    return out


def _load(
    cfg: BenchConfig,
    result: dict[str, Any],
    stub: generation_pb2_grpc.GenerationStub,
    prompts: list[list[int]],
    pipe: Pipeline | None,
) -> None:
    """k = 0 and the default policy at each concurrency; with a pipeline in this process, also
    the default policy with the router's opt-in load guard on, to show what the guard does."""
    base, spec = BASELINE, f"pipeline {cfg.default_policy}"
    systems = {base: pipeline_request(0, None), spec: pipeline_request(None, cfg.default_policy)}
    guarded = f"{spec} guard=on"
    deps = pipe.router_deps if pipe is not None else None
    guard = LoadGuard()
    if deps is not None:
        systems[guarded] = systems[spec]

    def before(name: str) -> None:
        if deps is not None:
            deps.guard = guard if name == guarded else None

    slices = 1 if cfg.quick else 2
    quiesce()
    with _bar(len(cfg.concurrency) * slices * len(systems), "load") as bar:
        points = load.run_load(
            stub,
            systems,
            prompts,
            cfg.max_tokens,
            cfg.concurrency,
            cfg.load_seconds,
            slices,
            lambda _label: bar.update(),
            before,
        )
    result["load"] = {
        "points": points,
        "windows_per_point": slices,
        "crossover": load.crossover(points, spec, base),
        "guard_effect": load.crossover(points, guarded, spec) if guarded in systems else None,
    }


def headline(result: dict[str, Any], policy: str) -> dict[str, Any]:
    """The four numbers the project's bar is about, each with its target."""
    name = f"pipeline {policy}"
    lat = result.get("latency", {})
    acc = result.get("acceptance", {}).get(name, {})
    cross = result.get("load", {}).get("crossover", {})
    return {
        "system": name,
        "speedup_vs_k0": {
            "value": lat.get("systems", {}).get(name, {}).get("speedup_vs_baseline"),
            "target": 3.0,
        },
        "speedup_vs_hf_assisted": {"value": lat.get("default_vs_hf_assisted"), "target": 1.5},
        "efficiency": {"value": acc.get("efficiency"), "target": 0.95},
        "load_min_ratio_vs_k0": {"value": cross.get("min_ratio"), "target": 1.0},
        "load_first_concurrency_below_k0": cross.get("first_concurrency_below_1"),
        "load_level_concurrencies": cross.get("level_concurrencies", []),
        "greedy_identical": result.get("greedy_check", {}).get("specdec_identical"),
    }


def print_summary(result: dict[str, Any], out: str) -> None:
    """The headline on stdout, and where the files are."""
    h = result["headline"]

    def show(key: str, unit: str = "×") -> str:
        v = h[key]["value"]
        return "–" if v is None else f"{v:.2f}{unit} (target ≥ {h[key]['target']:g}{unit})"

    print(f"{h['system']} over pipeline k=0: {show('speedup_vs_k0')}")
    print(f"{h['system']} over transformers assisted: {show('speedup_vs_hf_assisted')}")
    print(f"efficiency: {show('efficiency', '')}")
    first = h["load_first_concurrency_below_k0"]
    level = h.get("load_level_concurrencies") or []
    print(
        f"load: lowest ratio to k=0 {show('load_min_ratio_vs_k0')}; "
        + ("never below k=0" if first is None else f"below k=0 from {first} clients")
        + (f" (level, within the windows' spread, at {level} clients)" if level else "")
    )
    check = result.get("greedy_check", {})
    bad = {n: d for n, d in check.get("differing_prompts", {}).items() if d}
    print("greedy check: " + (f"DIFFERENT outputs {bad}" if bad else "all outputs identical"))
    files = ["result.json", "REPORT.md", *result.get("plots", [])]
    print(f"wrote {', '.join(str(Path(out) / f) for f in files)}")
