"""Latency mode: one request at a time, every system on the same prompt in turn.

Systems are interleaved (A B C ... on each prompt, the starting system rotating from prompt to
prompt) so that drift of a shared machine lands on all of them alike. Ratios are paired: each
system's tokens/s over the baseline's on the same prompt and pass, then the median of those.
Greedy outputs are compared with the reference system's, prompt by prompt.
Non-goals: concurrency (``load.py``), statistics beyond medians and quartiles.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from specdec.bench.systems import BASELINE, REFERENCE, System, pin_client, request_id
from specdec.bench.workloads import Prompt
from specdec.core.rounds import Tally

Key = tuple[str, int]  # (prompt id, pass)


@dataclass
class Sample:
    system: str
    prompt_id: str
    repeat: int
    output_tokens: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class LatencyRun:
    samples: list[Sample] = field(default_factory=list)
    outputs: dict[str, dict[Key, list[int]]] = field(default_factory=dict)  # system → tokens
    counts: dict[str, Tally] = field(default_factory=dict)  # speculating systems only


def run_latency(
    systems: Sequence[System],
    prompts: Sequence[tuple[Prompt, list[int]]],
    repeats: int,
    tick: Callable[[str], None] = lambda _name: None,
) -> LatencyRun:
    """Warm every system up on the first prompt, then time ``repeats`` interleaved passes."""
    out = LatencyRun(outputs={s.name: {} for s in systems})
    for system in systems:
        pin_client(system.cpus)
        system.run(prompts[0][1], request_id("warmup", system.name))
        tick(system.name)
    step = 0
    for rep in range(repeats):
        for prompt, ids in prompts:
            order = [systems[(step + i) % len(systems)] for i in range(len(systems))]
            step += 1
            for system in order:
                pin_client(system.cpus)
                run = system.run(ids, request_id("lat", system.name, prompt.id, rep))
                out.samples.append(
                    Sample(system.name, prompt.id, rep, len(run.token_ids), run.elapsed_s)
                )
                out.outputs[system.name][(prompt.id, rep)] = run.token_ids
                if run.counts is not None:
                    out.counts.setdefault(system.name, Tally()).merge(run.counts)
                tick(system.name)
    pin_client(None)
    return out


def run_ttft(
    systems: Sequence[System], prompt_ids: list[int], repeats: int
) -> dict[str, list[float]]:
    """Each system's time to first token on one short prompt, ``repeats`` interleaved passes
    (after one warm-up pass)."""
    out: dict[str, list[float]] = {s.name: [] for s in systems}
    for rep in range(repeats + 1):
        for i in range(len(systems)):
            system = systems[(rep + i) % len(systems)]
            pin_client(system.cpus)
            ttft = system.run(prompt_ids, request_id("ttft", system.name, rep)).ttft_s
            if rep and ttft is not None:
                out[system.name].append(ttft)
    pin_client(None)
    return out


def _rates(run: LatencyRun, system: str) -> dict[Key, float]:
    return {(s.prompt_id, s.repeat): s.tokens_per_s for s in run.samples if s.system == system}


def paired_ratio(run: LatencyRun, system: str, baseline: str) -> float | None:
    """Median over (prompt, pass) of system tokens/s ÷ baseline tokens/s; None without both."""
    mine, theirs = _rates(run, system), _rates(run, baseline)
    ratios = [mine[k] / theirs[k] for k in mine if k in theirs and theirs[k] > 0]
    return statistics.median(ratios) if ratios else None


def differing_prompts(run: LatencyRun, system: str, reference: str = REFERENCE) -> list[str]:
    """Prompts on which ``system`` produced other tokens than ``reference`` in some pass."""
    ref = run.outputs.get(reference, {})
    mine = run.outputs.get(system, {})
    return sorted({k[0] for k, tokens in mine.items() if k in ref and ref[k] != tokens})


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(run: LatencyRun, systems: Sequence[System]) -> dict[str, dict[str, Any]]:
    """Per system: medians, quartiles, paired ratios and the greedy check."""
    summary = {}
    for system in systems:
        samples = [s for s in run.samples if s.system == system.name]
        rates = [s.tokens_per_s for s in samples]
        q1, q3 = _quartiles(rates)
        differing = differing_prompts(run, system.name)
        summary[system.name] = {
            "kind": system.kind,
            "k": system.k,
            "policy": system.policy,
            "runs": len(samples),
            "output_tokens": sum(s.output_tokens for s in samples),
            "tokens_per_s_median": statistics.median(rates) if rates else 0.0,
            "tokens_per_s_q1": q1,
            "tokens_per_s_q3": q3,
            "s_per_token_median": statistics.median(
                s.elapsed_s / s.output_tokens for s in samples if s.output_tokens
            )
            if samples
            else 0.0,
            "speedup_vs_baseline": paired_ratio(run, system.name, BASELINE),
            "speedup_vs_target_only": paired_ratio(run, system.name, REFERENCE),
            "differing_prompts": len(differing),
            "differing_prompt_ids": differing,
        }
    return summary
