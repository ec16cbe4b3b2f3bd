"""``specdec bench``: the math it reports, and a ``--quick`` smoke run of the whole harness."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.bench import acceptance, config, load
from specdec.bench.systems import pipeline_name, request_id, system_of
from specdec.bench.workloads import WORKLOADS, load_workload
from specdec.core.rounds import Round, Tally
from specdec.local_pipeline import Pipeline


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "specdec.cli", "bench", "--threads", "1", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.unit
def test_leviathan_prediction_matches_the_paper_at_fixed_k():
    alpha, c, k = 0.8, 0.1, 4
    paper = (1 - alpha ** (k + 1)) / ((1 - alpha) * (k * c + 1))
    assert acceptance.predicted_speedup(alpha, c, [k] * 10) == pytest.approx(paper)
    assert acceptance.predicted_speedup(1.0, 0.0, [3]) == pytest.approx(4.0)
    assert acceptance.predicted_speedup(0.5, 0.1, [0, 0]) == pytest.approx(1.0)  # k = 0


@pytest.mark.unit
def test_alpha_is_the_mle_of_the_iid_model():
    # Rounds of k = 3: accepted 3 (no rejection), 1 (rejected at the 2nd), 0 (rejected at once).
    tally = Tally()
    for i, accepted in enumerate((3, 1, 0)):
        tally.add(_round(i + 1, 3, 3, accepted))
    assert tally.alpha == pytest.approx(4 / 6)
    assert acceptance.per_position_rates(tally) == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    # Shorter proposals (a cached one, prompt lookup) count only where they proposed.
    tally.add(_round(4, 3, 1, 1))
    assert acceptance.per_position_rates(tally) == pytest.approx([3 / 4, 1 / 3, 1 / 3])


def _round(index: int, depth: int, proposed: int, accepted: int) -> Round:
    return Round(
        index=index,
        position=10,
        depth=depth,
        num_proposed=proposed,
        num_accepted=accepted,
        token_ids=(1,) * (accepted + 1),
        finish=None,
        ahead="",
        draft_ns=0,
        verify_ns=0,
        queue_ns=0,
        service_ns=0,
        rtt_ns=0,
        round_ns=0,
        verifier_active=1,
        verifier_queue=0,
    )


@pytest.mark.unit
def test_quick_defaults_yield_to_explicit_flags():
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    argv = ["--quick", "--max-tokens", "5", "--fixed-k", "1-3,6"]
    cfg = config.from_args(p.parse_args(argv), ["bench", *argv])
    assert cfg.max_tokens == 5 and cfg.fixed_k == (1, 2, 3, 6)
    assert cfg.num_prompts == 2 and not cfg.hf and cfg.concurrency == (1, 2)
    assert not cfg.one_process and cfg.overhead and cfg.ahead_off
    assert cfg.command == "specdec bench --quick --max-tokens 5 --fixed-k 1-3,6"
    full = config.from_args(p.parse_args([]), [])
    assert full.hf and full.fixed_k == tuple(range(1, 9)) and full.concurrency == (1, 4, 16, 32)


def _point(system: str, clients: int, windows: list[float]) -> dict:
    return {
        "system": system,
        "concurrency": clients,
        "throughput_tokens_per_s": sum(windows) / len(windows),
        "window_throughputs": windows,
    }


@pytest.mark.unit
def test_a_load_loss_counts_only_when_every_window_shows_it():
    points = [
        _point("k0", 1, [100.0, 100.0]),
        _point("spec", 1, [150.0, 170.0]),
        _point("k0", 32, [100.0, 110.0]),
        _point("spec", 32, [104.0, 105.0]),  # 0.995 overall; the first window says 1.04
        _point("k0", 64, [100.0, 100.0]),
        _point("spec", 64, [90.0, 99.0]),  # lower in both windows: a loss
    ]
    cross = load.crossover(points, "spec", "k0")
    assert cross["ratio_by_concurrency"] == pytest.approx({1: 1.6, 32: 209 / 210, 64: 0.945})
    assert cross["window_ratios_by_concurrency"][32] == pytest.approx([1.04, 105 / 110])
    assert cross["level_concurrencies"] == [32]
    assert cross["first_concurrency_below_1"] == 64
    assert cross["never_below_k0"] is False and cross["min_ratio"] == pytest.approx(0.945)
    level_only = load.crossover(points[:4], "spec", "k0")
    assert level_only["first_concurrency_below_1"] is None and level_only["never_below_k0"]


@pytest.mark.unit
def test_a_load_point_reports_queueing_percentiles_and_errors():
    first = load.Window(seconds=1.0, requests=3, errors=1, queue_s=[0.0, 0.3, 0.1])
    second = load.Window(seconds=1.0, requests=2, queue_s=[0.4, 0.2])
    point = load.point("spec", 8, [first, second])
    assert point["errors"] == 1 and point["requests"] == 5
    assert point["queue_p50_s"] == pytest.approx(0.2)
    assert point["queue_p99_s"] == pytest.approx(0.4)
    assert load.point("spec", 8, [load.Window()])["queue_p50_s"] is None


@pytest.mark.unit
def test_stored_workloads_and_request_ids():
    for name in WORKLOADS:
        prompts = load_workload(name)
        assert len(prompts) >= 16 and all(p.text for p in prompts)
        assert len({p.id for p in prompts}) == len(prompts)
    rid = request_id("lat", "pipeline k=3", "code-01", 0)
    assert " " not in rid and system_of(rid) == "pipeline k=3"
    assert pipeline_name(3, None, ahead=False) == "pipeline k=3 ahead=off"
    assert pipeline_name(0, None, ahead=False) == "pipeline k=0"  # nothing drafted


@pytest.mark.e2e
def test_quick_run_writes_result_report_and_plots(model_dir: Path, tmp_path: Path):
    """The pipeline as separate processes (and a second router with the load guard), every
    mode, the report."""
    out = tmp_path / "bench"
    target, draft = str(model_dir / "target"), str(model_dir / "draft_close")
    proc = bench("--quick", "--target", target, "--draft", draft, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert {"machine", "config", "latency", "acceptance", "cost", "profile", "load"} <= set(result)
    assert {"headline", "greedy_check", "plots", "ttft", "overhead", "draft_ahead"} <= set(result)
    assert "separate processes" in result["machine"]["pipeline_layout"]
    systems = result["latency"]["systems"]
    pipeline = {"pipeline k=0", "pipeline k=2", "pipeline goodput"}
    pipeline |= {"pipeline k=2 ahead=off", "pipeline goodput ahead=off"}
    assert pipeline | {"in-process k=2", "in-process target-only"} == set(systems)
    assert result["greedy_check"]["specdec_identical"] is True
    assert all(s["differing_prompts"] == 0 for s in systems.values())
    assert set(result["acceptance"]) == (pipeline - {"pipeline k=0"}) | {"in-process k=2"}
    assert set(result["profile"]["pipeline"]) == pipeline
    comp = result["latency"]["comparisons"]
    assert comp["best_in_process"] == "in-process k=2" and comp["ahead_on_vs_off"] > 0
    points = {(p["system"], p["concurrency"]) for p in result["load"]["points"]}
    load_systems = ("pipeline k=0", "pipeline goodput", "pipeline goodput ahead=off")
    load_systems += ("pipeline goodput guard=on",)
    assert points == {(s, n) for s in load_systems for n in (1, 2)}
    assert set(result["load"]["guard_effect"]["ratio_by_concurrency"]) == {"1", "2"}
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in result["load"]["points"])
    assert {p["label"] for p in result["overhead"]["pairs"]} >= {"k = 0", "k = 4"}
    assert result["ttft"]["median_s"]["in-process target-only"] > 0
    assert result["headline"]["vs_best_in_process"]["value"] > 0
    face = result["http_face"]  # streamed HTTP against streamed gRPC, on a router serving both
    assert len(face["requests"]) == 2 and face["all_identical"] is True and face["k"] == 2
    assert all(x["http_chunks"] > 0 and x["grpc_chunks"] > 0 for x in face["requests"])
    added = result["headline"]["http_added_ms_per_chunk"]["value"]
    assert added == face["added_ms_per_chunk_median"]
    report = (out / "REPORT.md").read_text()
    for section in ("## Headline", "## Time to first token", "## Overhead of the split"):
        assert section in report
    assert "## HTTP face against gRPC face" in report
    assert "HTTP face added ms per streamed chunk, batch 1" in report
    assert result["command"] in report
    assert list(out.glob("*.png")) and all((out / p).is_file() for p in result["plots"])
    assert "greedy check: all outputs identical" in proc.stdout


@pytest.mark.e2e
def test_bench_against_a_running_router(model_dir: Path, tmp_path: Path):
    target, draft = str(model_dir / "target"), str(model_dir / "draft_close")
    pipe = Pipeline(target, draft).start()
    try:
        out = tmp_path / "bench"
        args = ["--quick", "--no-load", "--no-overhead", "--num-prompts", "1"]
        args += ["--addr", pipe.address("router")]
        proc = bench(*args, "--target", target, "--draft", draft, "--out", str(out))
    finally:
        pipe.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["greedy_check"]["specdec_identical"] is True
    assert "pipeline k=2" in result["profile"]["pipeline"]  # the stats carry the breakdown
    assert "load" not in result and "overhead" not in result
    assert "--http-addr" in result["http_face"]["skipped"]


@pytest.mark.e2e
def test_load_against_a_router_with_fewer_slots_than_clients_queues_without_errors(
    model_dir: Path, tmp_path: Path
):
    """``specdec bench --addr ... --concurrency N`` beyond the verifier's slots: the requests
    wait in the router's queue (queueing time reported), none is refused."""
    target, draft = str(model_dir / "target"), str(model_dir / "draft_close")
    pipe = Pipeline(target, draft, slots=2).start()
    try:
        out = tmp_path / "bench"
        args = ["--quick", "--no-latency", "--no-overhead", "--no-ahead-off", "--num-prompts", "2"]
        args += ["--concurrency", "6", "--load-seconds", "2", "--addr", pipe.address("router")]
        proc = bench(*args, "--target", target, "--draft", draft, "--out", str(out))
    finally:
        pipe.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads((out / "result.json").read_text())["load"]["points"]
    assert {p["system"] for p in points} == {"pipeline k=0", "pipeline goodput"}
    for p in points:
        assert p["requests"] > 0 and p["errors"] == 0
        assert p["queue_p99_s"] > 0  # 6 clients on 2 slots: some waited
    assert "errors, queueing p50" in proc.stdout
    assert "queue p50 / p99" in (out / "REPORT.md").read_text()
