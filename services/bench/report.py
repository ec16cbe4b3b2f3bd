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
        ("torch threads", str(m["torch_threads"])),
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


def _headline(r: dict[str, Any]) -> list[str]:
    h = r["headline"]

    def row(label: str, key: str, fmt: str) -> list[str]:
        value, target = h[key]["value"], h[key]["target"]
        met = "–" if value is None else ("yes" if value >= target else "no")
        return [label, _f(value, fmt), _f(target, "≥ " + fmt), met]

    first = h["load_first_concurrency_below_k0"]
    level = h.get("load_level_concurrencies") or []
    min_ratio = row("lowest load-mode throughput ratio to k = 0", "load_min_ratio_vs_k0", "{:.2f}×")
    if min_ratio[3] == "no" and first is None:
        min_ratio[3] = "level: a window contradicts the loss"
    rows = [
        row(
            f"speedup of `{h['system']}` over pipeline k = 0 (batch 1)", "speedup_vs_k0", "{:.2f}×"
        ),
        row("speedup over transformers assisted generation", "speedup_vs_hf_assisted", "{:.2f}×"),
        row(
            "efficiency (speedup over target-only ÷ Leviathan et al.'s prediction)",
            "efficiency",
            "{:.2f}",
        ),
        min_ratio,
        [
            "load-mode crossover (first concurrency where speculation loses, in every window)",
            ("none measured" if first is None else f"{first} clients")
            + (f" (level at {', '.join(map(str, level))} clients)" if level else ""),
            "none",
            "–"
            if h["load_min_ratio_vs_k0"]["value"] is None
            else ("yes" if first is None else "no"),
        ],
        [
            "greedy output identical to target-only (specdec systems)",
            _f(h["greedy_identical"], "{}"),
            "True",
            "–" if h["greedy_identical"] is None else ("yes" if h["greedy_identical"] else "no"),
        ],
    ]
    return ["## Headline", ""] + _table(["", "measured", "target", "met"], rows)


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
    return lines


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
        " logits its greedy choice can differ. A difference in a specdec system is a bug.",
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
    if not prof:
        return []
    lines = ["## Where a round's time goes", ""]
    if not prof["pipeline"]:
        return lines + [f"No per-round data: {prof['source']}.", ""]
    rows = []
    for name, p in prof["pipeline"].items():
        total = p["round_ms"] or 1.0

        def cell(key: str, p: dict[str, float] = p, total: float = total) -> str:
            return f"{p[key]:.2f} ({100 * p[key] / total:.0f}%)"

        rows.append(
            [
                name,
                f"{p['round_ms']:.2f}",
                cell("draft_ms"),
                cell("verify_ms"),
                cell("verifier_queue_ms"),
                cell("other_ms"),
                f"{p['tokens_per_round']:.2f}",
                f"{p['rounds']:.0f}",
            ]
        )
    for name, p in prof["in_process"].items():
        rows.append(
            [
                f"{name} (no network)",
                f"{p['round_ms']:.2f}",
                f"{p['draft_ms']:.2f} (step cost × k)",
                f"{p['verify_ms']:.2f} (step cost)",
                "–",
                "–",
                f"{p['tokens_per_round']:.2f}",
                "",
            ]
        )
    lines += [
        f"Mean milliseconds per round after the first (the prefill), from {prof['source']}: draft ="
        " the draft service's time (compute and its queue), verify = the verifier's batch compute,"
        " queue = waiting for the verifier's batch loop, the rest = network, protobuf"
        " serialization and the router's scheduling (the gap between round events minus the"
        " parts).",
        "",
    ]
    return lines + _table(
        [
            "system",
            "round ms",
            "draft ms",
            "verify ms",
            "verifier queue ms",
            "network + serialization + scheduling ms",
            "tokens/round",
            "rounds",
        ],
        rows,
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
            " inter-token latency is a response's gap ÷ the tokens it carries.",
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
                "requests",
                "errors",
            ],
            rows,
        )
        + [f"Throughput of the default policy ÷ k = 0: {ratios}.", ""]
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
        "- Every number above was measured in this run. The self-started pipeline runs its three"
        " services in the bench's own process (one Python interpreter for clients and servers);"
        " a separate `specdec up` deployment may do better under load.",
        "- OpenTelemetry spans are recorded in memory during the run (to profile rounds); that"
        " costs the pipeline systems a few microseconds per round.",
        "- Garbage collection is frozen (`gc.freeze()`) before each mode: the models and"
        " libraries the bench loads for the other systems share the pipeline's process, and one"
        " full collection over them stalls a verifier step for ~0.2 s.",
        "- On a shared machine, compare the load averages above: ratios (systems interleaved)"
        " are more trustworthy than absolute tokens/s.",
        "",
    ]


def render(result: dict[str, Any]) -> str:
    lines = ["# specdec benchmark report", ""]
    for section in (_machine, _headline, _latency, _greedy, _acceptance, _profile, _load, _plots):
        lines += section(result)
    lines += _notes()
    return "\n".join(lines)
