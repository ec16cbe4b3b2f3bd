"""One ``specdec bench`` run, start to end: load prompts and models, start (or reach) the
pipeline, measure latency, time to first token, costs, load and the split's overhead, then write
``result.json``, ``REPORT.md`` and plots.

The pipeline runs as separate processes, as ``specdec up`` starts them (disjoint CPU sets), and
the in-process engine runs in this process: each is measured in the layout a user runs.
Everything the report shows is measured here, in this run.
Non-goals: comparing with earlier runs; deciding pass or fail (the report shows the bars).
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from tqdm import tqdm

from specdec.bench import (
    acceptance,
    cost,
    http_face,
    latency,
    load,
    machine,
    overhead,
    plots,
    report,
)
from specdec.bench.config import BenchConfig
from specdec.bench.hf_peer import HF_ASSISTED, HF_GREEDY, TransformersPeer
from specdec.bench.llamacpp_peer import (
    LLAMA_TARGET,
    LLAMACPP,
    LlamaCppPeer,
    find_server,
    gguf_path,
    llama_draft_name,
    unavailable,
)
from specdec.bench.systems import (
    BASELINE,
    IN_PROCESS,
    PIPELINE,
    REFERENCE,
    TRANSFORMERS,
    InProcess,
    System,
    pipeline_name,
    pipeline_request,
    pipeline_system,
)
from specdec.bench.workloads import PROMPTS_DIR, Prompt, load_workload
from specdec.core.errors import SpecdecError
from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.core.model_config import load_config
from specdec.core.rounds import Tally
from specdec.core.tokenizer import Tokenizer
from specdec.serving.security_args import router_channel
from specdec.v1 import generation_pb2_grpc

if TYPE_CHECKING:
    from specdec.local_pipeline import Pipeline
    from specdec.up import Services

SCHEMA = "specdec.bench/2"
COST_K = 4  # the depth at which the verify cost is measured
TTFT_PROMPT_TOKENS = 5  # "a short prompt"
GUARD = "guard=on"
HTTP = "http"  # the router that also serves the OpenAI-compatible HTTP API


def validate(cfg: BenchConfig) -> None:
    for k in cfg.fixed_k:
        if not 1 <= k <= MAX_SPEC_DEPTH:
            raise SpecdecError(f"--fixed-k: k must be in 1..{MAX_SPEC_DEPTH}")
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


@dataclass
class Routers:
    """Stubs of the pipeline's router (and of a second one with the load guard on, when this
    run started the services), and how the pipeline runs."""

    stub: generation_pb2_grpc.GenerationStub
    guarded: generation_pb2_grpc.GenerationStub | None
    layout: str
    one_process: Pipeline | None = None
    client_cpus: frozenset[int] | None = None  # the router's CPUs: the bench's client runs there
    http: tuple[generation_pb2_grpc.GenerationStub, str] | None = None  # gRPC stub, HTTP address
    http_skipped: str | None = None  # why there is no HTTP face to measure


@contextmanager
def routers(cfg: BenchConfig, context: int, out: Path) -> Iterator[Routers]:
    """Reach ``--addr``; or start the pipeline: separate processes (as ``specdec up`` does, with
    a second router that has the load guard on), or inside this process (``--one-process``)."""
    slots = str(max(8, cfg.max_concurrency))  # every load-mode client holds a KV-cache slot
    channels: list[grpc.Channel] = []

    def stub(address: str) -> generation_pb2_grpc.GenerationStub:
        channels.append(router_channel(address, cfg.tls_ca if address == cfg.addr else None, None))
        return generation_pb2_grpc.GenerationStub(channels[-1])

    services, pipe = None, None
    try:
        if cfg.addr:
            r = Routers(stub(cfg.addr), None, f"a running router at {cfg.addr}")
            if cfg.http_addr and cfg.tls_ca:
                r.http_skipped = "--tls-ca: the HTTP-face mode speaks plain HTTP only"
            elif cfg.http_addr:
                r.http = (r.stub, cfg.http_addr)
            else:
                r.http_skipped = "--addr without --http-addr: no HTTP API to measure"
            yield r
        elif cfg.one_process:
            from specdec.local_pipeline import Pipeline

            pipe = Pipeline(cfg.target, cfg.draft, slots=int(slots), max_context_tokens=context)
            pipe.start()
            r = Routers(stub(pipe.address("router")), None, "one process (the bench's)", pipe)
            r.http_skipped = "--one-process: its router serves gRPC only"
            yield r
        else:
            services, http_listen = _start(cfg, context, slots, out)
            guarded = stub(services.addresses[GUARD]) if GUARD in services.addresses else None
            layout = f"separate processes; {services.layout.describe()}"
            cpus = frozenset(services.layout.router) if services.layout.router else None
            r = Routers(stub(services.addresses["router"]), guarded, layout, None, cpus)
            if http_listen is not None:
                r.http = (stub(services.addresses[HTTP]), http_listen)
            yield r
    except grpc.RpcError as exc:  # e.g. no router at --addr, or a prompt it will not take
        raise SpecdecError(f"router: {exc.code().name}: {exc.details()}") from exc
    finally:
        for channel in channels:
            channel.close()
        if pipe is not None:
            pipe.close()
        if services is not None:
            services.stop()


def _start(cfg: BenchConfig, context: int, slots: str, out: Path) -> tuple[Services, str | None]:
    """The services, and the HTTP address of the router that serves both faces (with
    ``http_face``: a router of its own, so the others keep their ports to themselves)."""
    from specdec.router.redis_server import free_loopback_port
    from specdec.up import start_services

    routers = {GUARD: ["--load-guard"]} if cfg.load else {}
    http_listen = f"127.0.0.1:{free_loopback_port()}" if cfg.http_face else None
    if http_listen is not None:
        routers[HTTP] = ["--http-listen", http_listen]
    services = start_services(
        cfg.target,
        cfg.draft,
        f"127.0.0.1:{free_loopback_port()}",
        routers=routers,
        log_dir=out,
        replica_flags=["--slots", slots, "--max-seq-len", str(context)],
        router_flags=["--max-seq-len", str(context)],
    )
    return services, http_listen


def quiesce() -> None:
    """Collect garbage now and exempt everything alive from later collections: a full
    collection over the models loaded here would stall a measurement by ~0.2 s."""
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
    (out / "logs").mkdir(parents=True, exist_ok=True)
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
    in_process = InProcess(cfg.target, cfg.draft, context)
    result["models"] = {
        "target": _model_info(cfg.target, in_process.target.model),
        "draft": _model_info(cfg.draft, in_process.draft.model),
    }
    with routers(cfg, context, out / "logs") as r:
        result["machine"]["pipeline_layout"] = r.layout
        if cfg.latency:
            _latency(cfg, result, r, prompts, in_process, target_cfg.eos_token_ids)
            _ttft(cfg, result, r, prompts[0][1], in_process)
        if cfg.load:
            _load(cfg, result, r, [ids for _, ids in prompts])
        if cfg.http_face:
            _http_face(cfg, result, r, prompts)
    if cfg.overhead:
        _overhead(cfg, result, prompts[0][1], out / "logs")
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


def cost_k(cfg: BenchConfig) -> int:
    """The fixed k nearest ``COST_K``: where the verify cost is measured and the one-k
    comparisons (draft-ahead off, llama.cpp's draft) run."""
    return min(cfg.fixed_k, key=lambda k: abs(k - COST_K))


def latency_systems(cfg: BenchConfig, r: Routers, in_process: InProcess) -> list[System]:
    """Pipeline k = 0, every fixed k and policy (draft-ahead on), the default policy and one
    fixed k with draft-ahead off, and the in-process engine at every fixed k and target-only."""

    def pipe(**kw: Any) -> System:
        return pipeline_system(r.stub, cfg.max_tokens, cpus=r.client_cpus, **kw)

    systems = [pipe(k=0)]
    systems += [pipe(k=k) for k in cfg.fixed_k]
    policies = dict.fromkeys((*cfg.policies, cfg.default_policy))  # the headline needs it
    systems += [pipe(policy=p) for p in policies]
    if cfg.ahead_off:
        k = cost_k(cfg)
        systems += [pipe(k=k, ahead=False), pipe(policy=cfg.default_policy, ahead=False)]
    return systems + in_process.systems(cfg.fixed_k, cfg.max_tokens)


def _latency(
    cfg: BenchConfig,
    result: dict[str, Any],
    r: Routers,
    prompts: list[tuple[Prompt, list[int]]],
    in_process: InProcess,
    eos: tuple[int, ...],
) -> None:
    """All systems interleaved; acceptance, efficiency, costs and the round breakdown."""
    systems = latency_systems(cfg, r, in_process)
    if cfg.hf:
        peer = TransformersPeer(cfg.target, cfg.draft, eos, cfg.hf_assistant_tokens)
        systems += peer.systems(cfg.max_tokens)
        result["transformers"] = peer.settings()
    with ExitStack() as stack:
        llama = _llamacpp(cfg, result, stack)
        if llama is not None:
            systems += llama.systems(cfg.max_tokens)
        quiesce()
        with _bar(len(systems) * (1 + len(prompts) * cfg.repeats), "latency") as bar:
            run = latency.run_latency(systems, prompts, cfg.repeats, lambda _n: bar.update())
        if llama is not None:
            result["llamacpp"] = llama.settings()
    summary = latency.summarize(run, systems)
    costs = cost.measure_costs(
        in_process.target, in_process.draft, prompts[0][1], cost_k(cfg), cfg.cost_repeats
    )
    result["latency"] = {
        "baseline": BASELINE,
        "reference": REFERENCE,
        "repeats": cfg.repeats,
        "systems": summary,
        "samples": [
            [x.system, x.prompt_id, x.repeat, x.output_tokens, round(x.elapsed_s, 6)]
            for x in run.samples
        ],
        "sample_fields": ["system", "prompt", "pass", "output_tokens", "elapsed_s"],
        "comparisons": _comparisons(cfg, run, summary),
    }
    result["cost"] = costs
    result["acceptance"] = {
        name: acceptance.acceptance_summary(
            counts, costs["c"], summary[name]["speedup_vs_target_only"]
        )
        for name, counts in run.counts.items()
        if any(counts.depths)
    }
    result["profile"] = _profile(run, systems)
    result["draft_ahead"] = {
        name: _ahead_rates(counts)
        for name, counts in run.counts.items()
        if counts.ahead_hits + counts.ahead_misses
    }
    default = pipeline_name(None, cfg.default_policy)
    if HF_ASSISTED in summary:
        result["latency"]["default_vs_hf_assisted"] = latency.paired_ratio(
            run, default, HF_ASSISTED
        )
        result["latency"]["hf_assisted_vs_hf_greedy"] = latency.paired_ratio(
            run, HF_ASSISTED, HF_GREEDY
        )
    if llama is not None:
        draft = llama_draft_name(llama.k)
        result["latency"]["default_vs_llamacpp_draft"] = latency.paired_ratio(run, default, draft)
        result["latency"]["llamacpp_draft_vs_target"] = latency.paired_ratio(
            run, draft, LLAMA_TARGET
        )
    differing = {n: s["differing_prompts"] for n, s in summary.items()}
    peers = (TRANSFORMERS, LLAMACPP)
    ours = {n: d for n, d in differing.items() if summary[n]["kind"] not in peers}
    result["greedy_check"] = {
        "reference": REFERENCE,
        "differing_prompts": differing,
        "specdec_identical": not any(ours.values()),
        "all_identical": not any(differing.values()),
    }


def _llamacpp(cfg: BenchConfig, result: dict[str, Any], stack: ExitStack) -> LlamaCppPeer | None:
    """llama-server target-only and with the draft at the cost k, started for the latency run
    (closed by ``stack``); None, with the reason in the result, when it is off or not there."""
    if not cfg.llamacpp:
        return None
    server = find_server(cfg.llama_server)
    target, draft = gguf_path(cfg.gguf_dir, cfg.target), gguf_path(cfg.gguf_dir, cfg.draft)
    reason = unavailable(server, cfg.llama_server, target, draft)
    if reason or server is None:
        result["llamacpp"] = {"skipped": reason}
        print(reason, file=sys.stderr)
        return None
    context = load_config(cfg.target).max_position_embeddings
    peer = LlamaCppPeer(server, target, draft, cost_k(cfg), context, Path(cfg.out) / "logs")
    stack.callback(peer.close)
    return peer


def _best(summary: dict[str, dict[str, Any]], kind: str) -> str | None:
    """The fixed-k system of ``kind`` with the highest median tokens/s (draft-ahead on)."""
    fixed = [
        n
        for n, s in summary.items()
        if s["kind"] == kind and s["k"] and s["policy"] is None and "ahead=off" not in n
    ]
    return max(fixed, key=lambda n: summary[n]["tokens_per_s_median"], default=None)


def _comparisons(
    cfg: BenchConfig, run: latency.LatencyRun, summary: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The paired ratios the headline is about."""
    default = f"pipeline {cfg.default_policy}"
    best_in_process, best_pipeline = _best(summary, IN_PROCESS), _best(summary, PIPELINE)
    out: dict[str, Any] = {
        "default": default,
        "best_in_process": best_in_process,
        "best_pipeline_fixed": best_pipeline,
        "default_vs_best_in_process": latency.paired_ratio(run, default, best_in_process)
        if best_in_process
        else None,
        "default_vs_best_pipeline_fixed": latency.paired_ratio(run, default, best_pipeline)
        if best_pipeline
        else None,
        "default_vs_in_process_target_only": latency.paired_ratio(run, default, REFERENCE),
    }
    off = pipeline_name(None, cfg.default_policy, ahead=False)
    if off in summary:
        out["ahead_on_vs_off"] = latency.paired_ratio(run, default, off)
        fixed_off = next(n for n, s in summary.items() if s["k"] and "ahead=off" in n)
        fixed_on = fixed_off.removesuffix(" ahead=off")
        out["ahead_on_vs_off_fixed"] = {
            "k": summary[fixed_off]["k"],
            "ratio": latency.paired_ratio(run, fixed_on, fixed_off),
        }
    return out


def _profile(run: latency.LatencyRun, systems: list[System]) -> dict[str, Any]:
    """Mean ms per round on each pipeline system's critical path, from the stats the services
    return (every round, the prefill included), and the in-process engine's round."""
    pipeline, in_process = {}, {}
    for s in systems:
        t = run.counts.get(s.name)
        if t is None or not t.rounds:
            continue
        elapsed = sum(x.elapsed_s for x in run.samples if x.system == s.name)
        row = {"round_ms": 1e3 * elapsed / t.rounds, "tokens_per_round": t.output_tokens / t.rounds}
        if s.kind == PIPELINE:
            row.update(_parts_ms(t))
            pipeline[s.name] = row
        elif s.kind == IN_PROCESS:
            in_process[s.name] = row
    return {"pipeline": pipeline, "in_process": in_process, "source": "the services' stats"}


def _parts_ms(t: Tally) -> dict[str, float]:
    n = t.rounds

    def ms(ns: int) -> float:
        return ns / n / 1e6

    return {
        "draft_ms": ms(t.draft_ns),
        "verify_ms": ms(t.verify_forward_ns),
        "verifier_queue_ms": ms(t.verify_queue_ns),
        "verifier_other_ms": ms(t.verify_service_ns - t.verify_forward_ns - t.verify_queue_ns),
        "network_ms": ms(t.network_ns),
        "router_ms": ms(t.router_ns),
    }


def _ahead_rates(t: Tally) -> dict[str, Any]:
    def rate(hits: int, rounds: int) -> float | None:
        return hits / rounds if rounds else None

    return {
        "hits": t.ahead_hits,
        "rounds": t.ahead_hits + t.ahead_misses,
        "hit_rate": t.ahead_hit_rate,
        "after_full": rate(t.ahead_hits_after_full, t.ahead_rounds_after_full),
        "after_full_rounds": t.ahead_rounds_after_full,
        "after_rejection_at": [
            rate(h, n)
            for h, n in zip(
                t.ahead_hits_after_rejection, t.ahead_rounds_after_rejection, strict=True
            )
        ],
        "after_rejection_rounds": list(t.ahead_rounds_after_rejection),
    }


def _ttft(
    cfg: BenchConfig, result: dict[str, Any], r: Routers, prompt: list[int], in_process: InProcess
) -> None:
    """Time to first token on a short prompt: the pipeline (k = 0 and the default policy)
    against the in-process engine's prefill round (target-only: it prefills and decides the
    first token)."""
    short = prompt[:TTFT_PROMPT_TOKENS]
    systems = [
        pipeline_system(r.stub, 2, k=0, cpus=r.client_cpus),
        pipeline_system(r.stub, 2, policy=cfg.default_policy, cpus=r.client_cpus),
        *in_process.systems([], 2),
    ]
    times = latency.run_ttft(systems, short, cfg.ttft_repeats)
    med = {name: statistics.median(v) if v else None for name, v in times.items()}
    prefill = med[REFERENCE]
    result["ttft"] = {
        "prompt_tokens": len(short),
        "repeats": cfg.ttft_repeats,
        "median_s": med,
        "excess_over_prefill_s": {
            n: v - prefill for n, v in med.items() if n != REFERENCE and v is not None
        },
    }


def _load(cfg: BenchConfig, result: dict[str, Any], r: Routers, prompts: list[list[int]]) -> None:
    """k = 0, the default policy with draft-ahead on and off, and (with the services started
    here) the default policy through a router with the opt-in load guard on."""
    base = BASELINE
    spec = f"pipeline {cfg.default_policy}"
    off = pipeline_name(None, cfg.default_policy, ahead=False)
    systems = {
        base: (r.stub, pipeline_request(0, None)),
        spec: (r.stub, pipeline_request(None, cfg.default_policy)),
    }
    if cfg.ahead_off:
        systems[off] = (r.stub, pipeline_request(None, cfg.default_policy, ahead=False))
    guarded = f"{spec} {GUARD}"
    if r.guarded is not None:
        systems[guarded] = (r.guarded, pipeline_request(None, cfg.default_policy))
    slices = 1 if cfg.quick else 2
    quiesce()
    with _bar(len(cfg.concurrency) * slices * len(systems), "load") as bar:
        points = load.run_load(
            systems,
            prompts,
            cfg.max_tokens,
            cfg.concurrency,
            cfg.load_seconds,
            slices,
            lambda _label: bar.update(),
        )
    result["load"] = {
        "points": points,
        "windows_per_point": slices,
        "crossover": load.crossover(points, spec, base),
        "ahead_effect": load.crossover(points, spec, off) if off in systems else None,
        "guard_effect": load.crossover(points, guarded, spec) if guarded in systems else None,
    }


def _http_face(
    cfg: BenchConfig, result: dict[str, Any], r: Routers, prompts: list[tuple[Prompt, list[int]]]
) -> None:
    """Streamed HTTP against streamed gRPC on the same router, batch 1, at the cost k."""
    if r.http is None:
        result["http_face"] = {"skipped": r.http_skipped}
        print(f"HTTP-face mode skipped: {r.http_skipped}", file=sys.stderr)
        return
    stub, address = r.http
    with _bar(len(prompts) * cfg.repeats, "http-face") as bar:
        result["http_face"] = http_face.run_http_face(
            stub,
            address,
            prompts,
            cfg.max_tokens,
            cost_k(cfg),
            cfg.repeats,
            r.client_cpus,
            lambda _n: bar.update(),
        )


def _overhead(cfg: BenchConfig, result: dict[str, Any], prompt: list[int], logs: Path) -> None:
    requests = cfg.overhead_requests
    with _bar(requests, "overhead") as bar:
        result["overhead"] = overhead.run_overhead(
            cfg.target, prompt[:16], requests, cfg.max_tokens, logs, lambda _n: bar.update()
        )


def headline(result: dict[str, Any], policy: str) -> dict[str, Any]:
    """The numbers the project's bars are about, each with its target."""
    name = f"pipeline {policy}"
    lat = result.get("latency", {})
    comp = lat.get("comparisons", {})
    cross = result.get("load", {}).get("crossover", {})
    ahead = result.get("load", {}).get("ahead_effect") or {}
    pairs = {p["label"]: p for p in result.get("overhead", {}).get("pairs", [])}
    ttft = result.get("ttft", {}).get("excess_over_prefill_s", {})
    return {
        "system": name,
        "vs_best_in_process": {"value": comp.get("default_vs_best_in_process"), "target": 1.0},
        "ahead_on_vs_off": {"value": comp.get("ahead_on_vs_off"), "target": 1.15},
        "vs_best_pipeline_fixed": {
            "value": comp.get("default_vs_best_pipeline_fixed"),
            "target": 1.0,
        },
        "overhead_k0_p50_ms": {
            "value": pairs.get("k = 0", {}).get("overhead_p50_ms"),
            "target": 0.5,
        },
        "overhead_k4_p50_ms": {
            "value": pairs.get("k = 4", {}).get("overhead_p50_ms"),
            "target": 0.5,
        },
        "ttft_excess_ms": {
            "value": None if ttft.get(name) is None else 1e3 * ttft[name],
            "target": 2.0,
        },
        "speedup_vs_k0": {
            "value": lat.get("systems", {}).get(name, {}).get("speedup_vs_baseline"),
            "target": 3.0,
        },
        "speedup_vs_hf_assisted": {"value": lat.get("default_vs_hf_assisted"), "target": 1.5},
        "speedup_vs_llamacpp_draft": {"value": lat.get("default_vs_llamacpp_draft"), "target": 1.0},
        "load_min_ratio_vs_k0": {"value": cross.get("min_ratio"), "target": 1.0},
        "load_first_concurrency_below_k0": cross.get("first_concurrency_below_1"),
        "load_level_concurrencies": cross.get("level_concurrencies", []),
        "load_min_ratio_ahead_on_vs_off": {"value": ahead.get("min_ratio"), "target": 1.0},
        "load_first_concurrency_ahead_below_off": ahead.get("first_concurrency_below_1"),
        "greedy_identical": result.get("greedy_check", {}).get("specdec_identical"),
        "http_added_ms_per_chunk": {
            "value": result.get("http_face", {}).get("added_ms_per_chunk_median"),
            "target": http_face.TARGET_MS_PER_CHUNK,
        },
    }


def print_summary(result: dict[str, Any], out: str) -> None:
    """The headline on stdout, and where the files are."""
    for line in report.summary_lines(result):
        print(line)
    files = ["result.json", "REPORT.md", *result.get("plots", [])]
    print(f"wrote {', '.join(str(Path(out) / f) for f in files)}")
