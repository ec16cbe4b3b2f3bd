"""``REPORT.md`` from ``result.json``'s content: the machine and command, the headline, the
detailed tables, the plots. It formats; it computes nothing that is not in the result.
Non-goals: HTML; comparisons across runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def _f(value: Any, fmt: str = "{:.2f}", none: str = "–") -> str:
    return none if value is None else fmt.format(value)


def _x(value: float | None) -> str:
    return _f(value, "{:.2f}×")


def _ms(seconds: float | None) -> str:
    return _f(None if seconds is None else seconds * 1e3, "{:.1f}")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _machine(r: dict[str, Any]) -> list[str]:
    m, cfg, models = r["machine"], r["config"], r.get("models", {})
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r["started_unix_s"]))
    rows = [
        ("CPU", f"{m['cpu']} ({m['cores']} cores, {m['cores_usable']} usable)"),
        ("torch threads (this process)", str(m["torch_threads"])),
        ("pipeline", m.get("pipeline_layout", "–")),
        ("GPU", m["gpu"] or "none (all systems on the CPU)"),
        (
            "load average (1/5/15 min)",
            f"start {m['load_average_start']}, end {m.get('load_average_end')}",
        ),
        ("software", f"Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}"),
        ("platform", m["platform"]),
    ]
    for role in ("target", "draft"):
        if role in models:
            info = models[role]
            dtype = info.get("dtype", "float32")  # results written before dtypes were recorded
            rows.append((role, f"`{info['path']}` ({info['params'] / 1e6:.1f}M params, {dtype})"))
    n = len(r["prompts"])
    rows.append(
        (
            "workload",
            f"{cfg['workload']}: {n} prompts, {cfg['max_tokens']} tokens each, greedy, "
            f"{cfg['repeats']} pass(es); context {cfg['context_tokens']} tokens"
            + (
                f", {cfg['prompts_truncated']} prompts cut to fit"
                if cfg["prompts_truncated"]
                else ""
            ),
        )
    )
    rows.append(("run", f"{when}, {r['elapsed_s']:.0f} s"))
    return ["## Machine and run", "", "```sh", r["command"], "```", ""] + _table(
        ["", ""], [list(row) for row in rows]
    )


def _bar_row(label: str, bar: dict[str, Any], fmt: str, lower: bool = False) -> list[str]:
    """A headline row: measured, target, met (``lower``: the target is a ceiling)."""
    value, target = bar["value"], bar["target"]
    met = (
        "–"
        if value is None
        else ("yes" if (value <= target if lower else value >= target) else "no")
    )
    return [label, _f(value, fmt), _f(target, ("≤ " if lower else "≥ ") + fmt), met]


def _headline(r: dict[str, Any]) -> list[str]:
    h = r["headline"]
    comp = r.get("latency", {}).get("comparisons", {})
    name = h["system"]
    first = h["load_first_concurrency_below_k0"]
    min_ratio = _bar_row(
        f"lowest load-mode throughput of `{name}` ÷ k = 0", h["load_min_ratio_vs_k0"], "{:.2f}×"
    )
    if min_ratio[3] == "no" and first is None:
        min_ratio[3] = "level: a window contradicts the loss"
    ahead_load = _bar_row(
        "lowest load-mode throughput, draft-ahead on ÷ off",
        h["load_min_ratio_ahead_on_vs_off"],
        "{:.2f}×",
    )
    if ahead_load[3] == "no" and h["load_first_concurrency_ahead_below_off"] is None:
        ahead_load[3] = "level: a window contradicts the loss"
    rows = [
        _bar_row(
            f"`{name}` ÷ the in-process engine at its best fixed k "
            f"(`{comp.get('best_in_process')}`), batch 1",
            h["vs_best_in_process"],
            "{:.2f}×",
        ),
        _bar_row(f"`{name}` draft-ahead on ÷ off, batch 1", h["ahead_on_vs_off"], "{:.2f}×"),
        _bar_row(
            f"`{name}` ÷ the pipeline's best fixed k (`{comp.get('best_pipeline_fixed')}`)",
            h["vs_best_pipeline_fixed"],
            "{:.2f}×",
        ),
        _bar_row(
            "overhead per round, near-zero-cost model, k = 0 (p50, ms)",
            h["overhead_k0_p50_ms"],
            "{:.2f}",
            lower=True,
        ),
        _bar_row(
            "overhead per round, near-zero-cost model, k = 4 (p50, ms)",
            h["overhead_k4_p50_ms"],
            "{:.2f}",
            lower=True,
        ),
        _bar_row(
            f"time to first token of `{name}` over the in-process prefill (ms)",
            h["ttft_excess_ms"],
            "{:.2f}",
            lower=True,
        ),
        min_ratio,
        ahead_load,
        _bar_row(f"`{name}` ÷ pipeline k = 0, batch 1", h["speedup_vs_k0"], "{:.2f}×"),
        _bar_row(
            f"`{name}` ÷ transformers assisted generation", h["speedup_vs_hf_assisted"], "{:.2f}×"
        ),
        _bar_row(
            f"`{name}` ÷ llama.cpp llama-server with the draft, batch 1",
            h.get("speedup_vs_llamacpp_draft", {"value": None, "target": 1.0}),
            "{:.2f}×",
        ),
        _bar_row(
            "HTTP face added ms per streamed chunk, batch 1",
            h.get("http_added_ms_per_chunk", {"value": None, "target": 1.0}),
            "{:.2f}",
            lower=True,
        ),
        [
            "greedy output identical to target-only (specdec systems)",
            _f(h["greedy_identical"], "{}"),
            "True",
            "–" if h["greedy_identical"] is None else ("yes" if h["greedy_identical"] else "no"),
        ],
    ]
    return ["## Headline", ""] + _table(["", "measured", "target", "met"], rows)


def summary_lines(r: dict[str, Any]) -> list[str]:
    """The headline as plain lines (what ``specdec bench`` prints)."""
    h = r["headline"]
    lines = []
    for key, label, fmt, lower in (
        ("vs_best_in_process", "÷ in-process at its best fixed k", "{:.2f}×", False),
        ("ahead_on_vs_off", "draft-ahead on ÷ off", "{:.2f}×", False),
        ("vs_best_pipeline_fixed", "÷ the pipeline's best fixed k", "{:.2f}×", False),
        ("overhead_k0_p50_ms", "overhead per round at k = 0 (ms, p50)", "{:.2f}", True),
        ("overhead_k4_p50_ms", "overhead per round at k = 4 (ms, p50)", "{:.2f}", True),
        ("ttft_excess_ms", "time to first token over the in-process prefill (ms)", "{:.2f}", True),
        ("load_min_ratio_vs_k0", "lowest load ratio to k = 0", "{:.2f}×", False),
        ("load_min_ratio_ahead_on_vs_off", "lowest load ratio, ahead on ÷ off", "{:.2f}×", False),
        ("http_added_ms_per_chunk", "HTTP face added ms per streamed chunk", "{:.2f}", True),
    ):
        row = _bar_row(label, h.get(key, {"value": None, "target": None}), fmt, lower)
        lines.append(f"{h['system']} {label}: {row[1]} (target {row[2]}: {row[3]})")
    for p in r.get("load", {}).get("points", []):
        lines.append(
            f"load {p['system']} x{p['concurrency']}: {p['requests']} requests, "
            f"{p['errors']} errors, queueing p50 {_ms(p.get('queue_p50_s'))} / "
            f"p99 {_ms(p.get('queue_p99_s'))} ms"
        )
    check = r.get("greedy_check", {})
    bad = {n: d for n, d in check.get("differing_prompts", {}).items() if d}
    lines.append(
        "greedy check: " + (f"DIFFERENT outputs {bad}" if bad else "all outputs identical")
    )
    return lines


def _latency(r: dict[str, Any]) -> list[str]:
    lat = r.get("latency")
    if not lat:
        return []
    rows = []
    for name, s in lat["systems"].items():
        rows.append(
            [
                name,
                f"{s['tokens_per_s_median']:.1f}",
                f"{s['tokens_per_s_q1']:.1f}–{s['tokens_per_s_q3']:.1f}",
                _ms(s["s_per_token_median"]),
                _x(s["speedup_vs_baseline"]),
                _x(s["speedup_vs_target_only"]),
                str(s["output_tokens"]),
                str(s["differing_prompts"]),
            ]
        )
    lines = [
        "## Latency (one request at a time)",
        "",
        "Systems interleaved on every prompt; medians over "
        f"{lat['systems'][lat['baseline']]['runs']} runs each; ratios are medians of per-prompt"
        " ratios. Tokens/s = generated tokens ÷ the client's wall time of the call (every"
        " system stops at the target's eos).",
        "",
    ]
    lines += _table(
        [
            "system",
            "tokens/s",
            "quartiles",
            "ms/token",
            "× pipeline k=0",
            "× in-process target-only",
            "tokens",
            "prompts ≠ target-only",
        ],
        rows,
    )
    hf = r.get("transformers")
    if hf:
        lines += [
            f"transformers {hf['transformers_version']} assisted generation ran with its defaults"
            f" for the draft: num_assistant_tokens = {hf['num_assistant_tokens']} "
            f"(schedule `{hf['num_assistant_tokens_schedule']}`), assistant_confidence_threshold"
            f" = {hf['assistant_confidence_threshold']}"
            + (
                " (adapted per run)"
                if hf["confidence_threshold_adapts"]
                else " (fixed: scikit-learn is not installed)"
            )
            + f"; {hf['dtype']} on the {hf['device']}. Assisted over transformers greedy:"
            f" {_x(lat.get('hf_assisted_vs_hf_greedy'))}.",
            "",
        ]
    return lines + _llamacpp(r)


def _llamacpp(r: dict[str, Any]) -> list[str]:
    """How the llama.cpp peer ran (or why it did not), with its own per-token times."""
    peer = r.get("llamacpp")
    if not peer:
        return []
    if "skipped" in peer:
        return [peer["skipped"], ""]
    lat = r["latency"]
    lines = [
        f"llama.cpp `{peer['version']}` `llama-server`, {peer['dtype']} GGUF, "
        f"{peer['threads']} threads, one slot; the draft with `--spec-type {peer['spec_type']}"
        f" --spec-draft-n-max {peer['k']}`; token-id prompts, greedy, no prompt cache."
        f" With the draft over target-only: {_x(lat.get('llamacpp_draft_vs_target'))}."
        " llama-server's own timings (medians):",
        "",
    ]
    rows = [
        [
            name,
            _f(t["predicted_ms_per_token_median"]),
            _f(t["prompt_ms_per_token_median"], "{:.3f}"),
            _f(t["acceptance_rate"]),
        ]
        for name, t in peer["timings"].items()
    ]
    return lines + _table(["system", "ms/generated token", "ms/prompt token", "acceptance"], rows)


def _greedy(r: dict[str, Any]) -> list[str]:
    g = r.get("greedy_check")
    if not g:
        return []
    bad = {n: d for n, d in g["differing_prompts"].items() if d}
    if not bad:
        return [
            "**Greedy check:** every system produced exactly the reference's tokens on every"
            " prompt.",
            "",
        ]
    lines = ["**Greedy check: outputs differ from in-process target-only decoding:**", ""]
    for name, n in bad.items():
        ids = ", ".join(r["latency"]["systems"][name]["differing_prompt_ids"])
        lines.append(f"- {name}: {n} prompt(s) ({ids})")
    lines += [
        "",
        "transformers computes the same fp32 model with other kernels; at a near-tie of the top two"
        " logits its greedy choice can differ (llama.cpp too). A difference in a specdec system"
        " is a bug.",
        "",
    ]
    return lines


def _acceptance(r: dict[str, Any]) -> list[str]:
    acc, c = r.get("acceptance"), r.get("cost")
    if not acc or not c:
        return []
    rows = []
    for name, a in acc.items():
        rows.append(
            [
                name,
                _f(a["alpha"], "{:.3f}"),
                f"{a['acceptance_rate']:.3f}",
                f"{a['mean_acceptance_length']:.2f}",
                f"{a['mean_depth']:.2f}",
                str(a["rounds"]),
                _x(a["predicted_speedup"]),
                _x(a["measured_speedup"]),
                _f(a["efficiency"]),
                " ".join(f"{x:.2f}" for x in a["per_position"]),
            ]
        )
    return [
        "## Acceptance and efficiency",
        "",
        f"Cost ratio c = draft step ÷ target step = {c['draft_step_s'] * 1e3:.2f} ms ÷ "
        f"{c['target_step_s'] * 1e3:.2f} ms = **{c['c']:.3f}** (one decode step each after "
        f"{c['context_tokens']} tokens, interleaved, median of {c['repeats']}). Verifying "
        f"{c['verify_tokens']} tokens costs {c['verify_over_decode']:.2f}× a decode step "
        "(Leviathan et al. assume 1×).",
        "",
        "alpha: per-token acceptance rate of the i.i.d. model (MLE: accepted ÷ (accepted + rounds"
        " with a rejection)); predicted = Σ over rounds (1 − alpha^(k+1))/(1 − alpha)"
        " ÷ Σ (k·c + 1),"
        " i.e. (1 − alpha^(k+1)) / ((1 − alpha)(k·c + 1)) at fixed k (arXiv 2211.17192);"
        " measured = median paired speedup over in-process target-only decoding (the paper's"
        " baseline: plain decoding, no network, so the efficiency charges every overhead);"
        " mean acceptance length = 1 + accepted ÷ rounds that drafted.",
        "",
    ] + _table(
        [
            "system",
            "alpha",
            "accepted/proposed",
            "mean acceptance length",
            "mean k",
            "rounds",
            "predicted",
            "measured (× target-only)",
            "efficiency",
            "acceptance by position 1, 2, …",
        ],
        rows,
    )


def _profile(r: dict[str, Any]) -> list[str]:
    prof = r.get("profile")
    if not prof or not prof["pipeline"]:
        return []
    keys = (
        "draft_ms",
        "verify_ms",
        "verifier_queue_ms",
        "verifier_other_ms",
        "network_ms",
        "router_ms",
    )
    rows = []
    for name, p in prof["pipeline"].items():
        total = p["round_ms"] or 1.0
        parts = [f"{p[k]:.2f} ({100 * p[k] / total:.0f}%)" for k in keys]
        rest = p["round_ms"] - sum(p[k] for k in keys)
        rows.append(
            [name, f"{p['round_ms']:.2f}", *parts, f"{rest:.2f}", f"{p['tokens_per_round']:.2f}"]
        )
    for name, p in prof["in_process"].items():
        blank = ["–"] * (len(keys) + 1)
        rows.append(
            [f"{name} (no network)", f"{p['round_ms']:.2f}", *blank, f"{p['tokens_per_round']:.2f}"]
        )
    return [
        "## Where a round's time goes",
        "",
        f"Mean milliseconds per round (every round, the prefill included), from {prof['source']}:"
        " round = the client's wall time ÷ rounds; waiting for drafts = the router's wait for a"
        " proposal (0 when it was drafted ahead); verifier forward, queue and handling = what the"
        " verifier reports of its share; network = each round trip to the verifier minus that"
        " share (transport and serialization on both sides); router = the router's own work"
        " between a verdict and the next step; the rest is outside the router's rounds (the"
        " client's call, the first message, streaming the answer).",
        "",
    ] + _table(
        [
            "system",
            "round ms",
            "waiting for drafts",
            "verifier forward",
            "verifier queue",
            "verifier handling",
            "network",
            "router",
            "rest",
            "tokens/round",
        ],
        rows,
    )


def _ttft(r: dict[str, Any]) -> list[str]:
    t = r.get("ttft")
    if not t:
        return []
    rows = [[n, _ms(v), _ms(t["excess_over_prefill_s"].get(n))] for n, v in t["median_s"].items()]
    return [
        "## Time to first token",
        "",
        f"A {t['prompt_tokens']}-token prompt, {t['repeats']} interleaved passes, medians; the"
        " client's wait for its first token. The in-process engine's is its prefill round (the"
        " prefill decides the first token).",
        "",
    ] + _table(["system", "TTFT ms", "over the in-process prefill, ms"], rows)


def _http_face(r: dict[str, Any]) -> list[str]:
    f = r.get("http_face")
    if not f:
        return []
    head = ["## HTTP face against gRPC face", ""]
    if "skipped" in f:
        return head + [f"Not measured: {f['skipped']}.", ""]
    rows = [
        [
            f"{x['prompt']} (pass {x['pass']})",
            _ms(x["grpc_s"]),
            _ms(x["http_s"]),
            f"{x['grpc_chunks']} / {x['http_chunks']}",
            _f(x["added_ms_per_chunk"], "{:+.3f}"),
            "yes" if x["identical"] else "**no**",
        ]
        for x in f["requests"]
    ]
    return (
        head
        + [
            f"The same router, batch 1: streamed gRPC `Generate` and streamed `{f['endpoint']}`,"
            f" interleaved per prompt, greedy, {f['max_tokens']} tokens at most, fixed k ="
            f" {f['k']}. Added ms per chunk = (HTTP − gRPC wall time) ÷ HTTP chunks. Median"
            f" **{_f(f['added_ms_per_chunk_median'], '{:+.3f}')}** ms, p90"
            f" {_f(f['added_ms_per_chunk_p90'], '{:+.3f}')} ms, pooled (summed differences ÷"
            f" summed chunks) {_f(f.get('added_ms_per_chunk_pooled'), '{:+.3f}')} ms (target ≤"
            f" {_f(f['target_ms_per_chunk'])}); texts identical on every request:"
            f" {f['all_identical']}.",
            "",
        ]
        + _table(
            ["prompt", "gRPC ms", "HTTP ms", "chunks gRPC / HTTP", "added ms/chunk", "same text"],
            rows,
        )
    )


def _ahead(r: dict[str, Any]) -> list[str]:
    a = r.get("draft_ahead")
    if not a:
        return []
    comp = r.get("latency", {}).get("comparisons", {})
    rows = []
    for name, x in a.items():
        rejections = [
            f"{j}: {_f(v, '{:.2f}')} ({n})"
            for j, (v, n) in enumerate(
                zip(x["after_rejection_at"], x["after_rejection_rounds"], strict=True)
            )
            if n
        ]
        rows.append(
            [
                name,
                f"{x['hit_rate']:.2f} ({x['hits']}/{x['rounds']})",
                f"{_f(x['after_full'], '{:.2f}')} ({x['after_full_rounds']})",
                ", ".join(rejections) or "–",
            ]
        )
    fixed = comp.get("ahead_on_vs_off_fixed") or {}
    lines = [
        "## Draft-ahead",
        "",
        "While the verifier checks a round, the draft drafts the next proposal for the round's"
        " likeliest outcomes; a hit is a round whose proposal was ready when the verdict"
        " arrived. By outcome: after a round whose drafts were all accepted, and after a"
        " rejection at draft position j (rounds in brackets).",
        "",
    ]
    lines += _table(["system", "hit rate", "after all accepted", "after a rejection at j"], rows)
    if "ahead_on_vs_off" in comp:
        lines += [
            "Draft-ahead on ÷ off, paired per prompt: default policy"
            f" {_x(comp['ahead_on_vs_off'])}, fixed k = {fixed.get('k')} {_x(fixed.get('ratio'))}.",
            "",
        ]
    return lines


def _overhead(r: dict[str, Any]) -> list[str]:
    o = r.get("overhead")
    if not o:
        return []

    def pct(system: str) -> str:
        s = o["systems"][system]
        return f"{s['p50_ms']:.3f} / {s['p99_ms']:.3f}"

    rows = [
        [
            p["label"],
            pct(p["pipeline"]),
            pct(p["in_process"]),
            f"{p['overhead_p50_ms']:.3f} / {p['overhead_p99_ms']:.3f}",
        ]
        for p in o["pairs"]
    ]
    parts = [
        [
            name,
            f"{b['round_us']:.0f}",
            f"{b['draft_us']:.0f}",
            f"{b['verify_forward_us']:.0f}",
            f"{b['verify_other_us']:.0f}",
            f"{b['network_us']:.0f}",
            f"{b['router_us']:.0f}",
            f"{b['ahead_hits']}/{b['ahead_hits'] + b['ahead_misses']}",
        ]
        for name, b in o["breakdown"].items()
    ]
    return (
        [
            "## Overhead of the split",
            "",
            f"Model: {o['model']}; pipeline: separate processes ({o['layout']}); {o['requests']}"
            f" requests of {o['max_tokens']} tokens per system, interleaved. ms per round ="
            " the client's wall time ÷ rounds, per request; p50 / p99 over requests.",
            "",
        ]
        + _table(["", "pipeline ms/round", "in-process ms/round", "overhead ms/round"], rows)
        + ["One request per pipeline system, µs per round on the critical path:", ""]
        + _table(
            [
                "system",
                "round",
                "drafts",
                "verifier forward",
                "verifier handling",
                "network",
                "router",
                "ahead hits",
            ],
            parts,
        )
    )


def _load(r: dict[str, Any]) -> list[str]:
    ld = r.get("load")
    if not ld:
        return []
    rows = []
    for p in ld["points"]:
        rows.append(
            [
                str(p["concurrency"]),
                p["system"],
                f"{p['throughput_tokens_per_s']:.1f}",
                f"{_ms(p['ttft_p50_s'])} / {_ms(p['ttft_p99_s'])}",
                f"{_ms(p['itl_p50_s'])} / {_ms(p['itl_p99_s'])}",
                _ms(p["tpot_median_s"]),
                f"{_ms(p.get('queue_p50_s'))} / {_ms(p.get('queue_p99_s'))}",
                str(p["requests"]),
                str(p["errors"]),
            ]
        )
    ratios = _by_clients(ld["crossover"])
    return (
        [
            "## Load (closed-loop clients)",
            "",
            f"Each point: {ld['points'][0]['seconds']:.1f} s of measuring per system, in"
            f" {ld['windows_per_point']} alternating window(s); throughput counts tokens arriving"
            " inside the windows. Latencies in ms (p50 / p99) from streamed arrival times; an"
            " inter-token latency is a response's gap ÷ the tokens it carries; queueing is each"
            " request's wait in the router's queue for a verifier slot (its stats' queue_ns).",
            "",
        ]
        + _table(
            [
                "clients",
                "system",
                "tokens/s",
                "TTFT p50 / p99",
                "ITL p50 / p99",
                "TPOT median",
                "queue p50 / p99",
                "requests",
                "errors",
            ],
            rows,
        )
        + [f"Throughput of the default policy ÷ k = 0: {ratios}.", ""]
        + _ahead_effect(ld.get("ahead_effect"))
        + _guard_effect(ld.get("guard_effect"))
    )


def _by_clients(crossover: dict[str, Any]) -> str:
    """``load.crossover``'s ratios as "1 clients 1.20× (1.18, 1.22), 4 clients 0.95× (...)",
    each window's ratio in brackets when there are several."""
    windows = crossover.get("window_ratios_by_concurrency", {})

    def one(n: Any, v: float) -> str:
        w = windows.get(n, [])
        return f"{n} clients {v:.2f}×" + (
            f" ({', '.join(f'{x:.2f}' for x in w)})" if len(w) > 1 else ""
        )

    return ", ".join(one(n, v) for n, v in crossover["ratio_by_concurrency"].items())


def _ahead_effect(effect: dict[str, Any] | None) -> list[str]:
    if not effect:
        return []
    return [f"Throughput of the default policy, draft-ahead on ÷ off: {_by_clients(effect)}.", ""]


def _guard_effect(effect: dict[str, Any] | None) -> list[str]:
    if not effect:
        return []
    ratios = _by_clients(effect)
    return [
        "Throughput of the default policy with the router's opt-in load guard on (`guard=on`,"
        " as `--load-guard` runs it; the guard switches speculation off where it measures slower"
        f" than plain decoding at that load) ÷ the default, guard off: {ratios}.",
        "",
    ]


def _plots(r: dict[str, Any]) -> list[str]:
    captions = {
        "tokens_per_s.png": "Tokens/s by system (batch 1)",
        "acceptance.png": "Acceptance by position",
        "load.png": "Load curves",
        "round_breakdown.png": "Round-time breakdown",
    }
    lines = ["## Plots", ""]
    for name in r.get("plots", []):
        lines += [f"![{captions.get(name, name)}]({name})", ""]
    return lines


def _notes() -> list[str]:
    return [
        "## Notes",
        "",
        "- Every number above was measured in this run. The pipeline ran as separate processes,"
        " as `specdec up` starts them (CPU sets in the machine table); the in-process engine and"
        " the clients ran in the bench's process, so while a pipeline system is measured the"
        " bench's own client shares the router's CPUs.",
        "- Garbage collection is frozen (`gc.freeze()`) before each mode: a full collection over"
        " the models the bench loads would stall a measurement by ~0.2 s.",
        "- On a shared machine, compare the load averages above: ratios (systems interleaved)"
        " are more trustworthy than absolute tokens/s.",
        "",
    ]


def render(result: dict[str, Any]) -> str:
    lines = ["# specdec benchmark report", ""]
    sections = (
        _machine,
        _headline,
        _latency,
        _greedy,
        _ttft,
        _ahead,
        _acceptance,
        _profile,
        _load,
        _overhead,
        _http_face,
        _plots,
    )
    for section in sections:
        lines += section(result)
    lines += _notes()
    return "\n".join(lines)
