"""The report's PNG plots (matplotlib, headless): tokens/s by system, acceptance by position,
load curves, and the round-time breakdown. Each function takes ``result.json``'s content and
returns the file name it wrote, or None when the run has nothing to plot.
Non-goals: interactive plots; styling beyond legibility.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specdec.core.errors import SpecdecError

COLORS = {
    "pipeline": "#1f77b4",
    "in-process": "#2ca02c",
    "transformers": "#ff7f0e",
    "llama.cpp": "#d62728",
}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise SpecdecError(
            "the bench plots need matplotlib: pip install -e '.[bench]' (or matplotlib)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    """Lay out, write ``out / name`` and free the figure; returns ``name``."""
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    _pyplot().close(fig)
    return name


def tokens_per_s(result: dict[str, Any], out: Path) -> str | None:
    systems = result.get("latency", {}).get("systems", {})
    if not systems:
        return None
    plt = _pyplot()
    names = list(systems)
    med = [systems[n]["tokens_per_s_median"] for n in names]
    err = [
        [m - systems[n]["tokens_per_s_q1"] for n, m in zip(names, med, strict=True)],
        [systems[n]["tokens_per_s_q3"] - m for n, m in zip(names, med, strict=True)],
    ]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    ax.barh(names, med, xerr=err, color=[COLORS[systems[n]["kind"]] for n in names])
    base = systems.get("pipeline k=0", {}).get("tokens_per_s_median")
    if base:
        ax.axvline(base, color="grey", linestyle="--", linewidth=1, label="pipeline k=0")
        ax.legend(loc="lower right")
    ax.invert_yaxis()
    ax.set_xlabel("tokens/s at batch 1 (median, bars: quartiles)")
    ax.set_title("Latency mode: tokens/s by system")
    return _save(fig, out, "tokens_per_s.png")


def acceptance(result: dict[str, Any], out: Path) -> str | None:
    rows = {n: a for n, a in result.get("acceptance", {}).items() if a["per_position"]}
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    fixed = [n for n in rows if n.startswith("pipeline k=")]
    for name, a in rows.items():
        rates = a["per_position"]
        style: dict[str, Any] = {"marker": "o", "label": name}
        if name in fixed:  # fixed depths shade from light to dark; the rest stand out
            style["color"] = plt.cm.viridis(0.9 - 0.8 * fixed.index(name) / max(1, len(fixed) - 1))
        else:
            style.update(linestyle="--" if name.startswith("pipeline") else ":", linewidth=2.2)
        ax.plot(range(1, len(rates) + 1), rates, **style)
    ax.set_xlabel("draft position in the round")
    ax.set_ylabel("acceptance rate (accepted / proposed)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Acceptance by position")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, "acceptance.png")


def load_curves(result: dict[str, Any], out: Path) -> str | None:
    points = result.get("load", {}).get("points", [])
    if not points:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        ("throughput_tokens_per_s", None, "throughput (tokens/s)"),
        ("ttft_p50_s", "ttft_p99_s", "time to first token (s)"),
        ("itl_p50_s", "itl_p99_s", "inter-token latency (s)"),
    ]
    for system in dict.fromkeys(p["system"] for p in points):
        mine = sorted((p for p in points if p["system"] == system), key=lambda p: p["concurrency"])
        x = [p["concurrency"] for p in mine]
        for ax, (p50, p99, label) in zip(axes, panels, strict=True):
            (line,) = ax.plot(x, [p[p50] for p in mine], marker="o", label=f"{system}")
            if p99:
                ax.plot(x, [p[p99] for p in mine], linestyle=":", color=line.get_color())
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(label + ("  (solid p50, dotted p99)" if p99 else ""), fontsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle("Load mode: closed-loop clients")
    return _save(fig, out, "load.png")


def round_breakdown(result: dict[str, Any], out: Path) -> str | None:
    rows = result.get("profile", {}).get("pipeline", {})
    if not rows:
        return None
    plt = _pyplot()
    parts = [
        ("draft_ms", "waiting for drafts"),
        ("verify_ms", "verifier forward"),
        ("verifier_queue_ms", "verifier queue"),
        ("verifier_other_ms", "verifier handling"),
        ("network_ms", "network + serialization"),
        ("router_ms", "router"),
    ]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
    left = [0.0] * len(names)
    for key, label in parts:
        values = [max(0.0, rows[n][key]) for n in names]
        ax.barh(names, values, left=left, label=label)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds per round on the critical path (mean over every round)")
    ax.set_title("Where a round's time goes")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out, "round_breakdown.png")


def write_all(result: dict[str, Any], out: Path) -> list[str]:
    made = [f(result, out) for f in (tokens_per_s, acceptance, load_curves, round_breakdown)]
    return [m for m in made if m]
