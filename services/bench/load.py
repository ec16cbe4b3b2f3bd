"""Load mode: N closed-loop clients (each sends its next request when the last one ends).

For each concurrency N the systems take turns in short windows (A B A B ...), so drift of a
shared machine lands on both. Throughput counts the tokens that arrive inside the window; the
requests still running at its end finish (and their latencies count) but their later tokens do
not. Time to first token and inter-token latency come from the arrival times of the streamed
responses, on the client. Speculation delivers tokens in bursts, so a response carrying n tokens
after a gap g counts n inter-token latencies of g / n (the tokens of the first response beyond
the first token are not counted). Queueing time is the router's own figure: the time each
request waited for a verifier slot (``GenerationStats.queue_ns``); errors count requests that
ended in an error status (e.g. RESOURCE_EXHAUSTED when the router's queue is full).
Non-goals: open-loop (fixed arrival rate) load; sessions.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from specdec.bench.stats import percentile
from specdec.bench.systems import pin_client, request_id
from specdec.v1 import generation_pb2, generation_pb2_grpc


@dataclass
class Window:
    """What one system's clients measured in one window."""

    seconds: float = 0.0
    tokens_in_window: int = 0
    requests: int = 0
    errors: int = 0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)
    tpot_s: list[float] = field(default_factory=list)  # per request: (last − first) / (n − 1)
    queue_s: list[float] = field(default_factory=list)  # per request: its wait for a slot

    def add(self, other: Window) -> None:
        self.seconds += other.seconds
        self.tokens_in_window += other.tokens_in_window
        self.requests += other.requests
        self.errors += other.errors
        self.ttft_s += other.ttft_s
        self.itl_s += other.itl_s
        self.tpot_s += other.tpot_s
        self.queue_s += other.queue_s


def _client(
    stub: generation_pb2_grpc.GenerationStub,
    make_request: Callable[[int], generation_pb2.GenerateRequest],
    start: float,
    end: float,
    out: Window,
    lock: threading.Lock,
    cpus: frozenset[int] | None = None,
) -> None:
    """Send requests back to back until ``end``; record into a private window, then merge."""
    pin_client(cpus)
    mine = Window()
    i = 0
    while time.perf_counter() < end:
        sent = time.perf_counter()
        arrivals: list[tuple[float, int]] = []
        try:
            for response in stub.Generate(make_request(i)):
                if response.token_ids:
                    arrivals.append((time.perf_counter(), len(response.token_ids)))
                if response.HasField("stats"):
                    mine.queue_s.append(response.stats.queue_ns / 1e9)
        except grpc.RpcError:
            mine.errors += 1
            time.sleep(0.05)  # e.g. out of slots: back off instead of spinning
            continue
        finally:
            i += 1
        mine.requests += 1
        mine.tokens_in_window += sum(n for t, n in arrivals if start <= t <= end)
        if not arrivals:
            continue
        mine.ttft_s.append(arrivals[0][0] - sent)
        for (t0, _), (t1, n) in itertools.pairwise(arrivals):
            mine.itl_s += [(t1 - t0) / n] * n
        total = sum(n for _, n in arrivals)
        if total > 1:
            mine.tpot_s.append((arrivals[-1][0] - arrivals[0][0]) / (total - 1))
    with lock:
        out.add(mine)


def run_window(
    stub: generation_pb2_grpc.GenerationStub,
    make_request: Callable[[int, int], generation_pb2.GenerateRequest],
    concurrency: int,
    seconds: float,
    cpus: frozenset[int] | None = None,
) -> Window:
    """``concurrency`` clients for ``seconds`` (their threads on ``cpus``); ``make_request(client,
    i)`` builds each request."""
    out, lock = Window(), threading.Lock()
    start = time.perf_counter()
    end = start + seconds
    threads = [
        threading.Thread(
            target=_client,
            args=(stub, lambda i, c=c: make_request(c, i), start, end, out, lock, cpus),
            daemon=True,
        )
        for c in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.seconds = seconds
    return out


def point(system: str, concurrency: int, windows: list[Window]) -> dict[str, Any]:
    """One load point as the report shows it, from its system's windows in order."""
    w = Window()
    for one in windows:
        w.add(one)
    return {
        "system": system,
        "concurrency": concurrency,
        "seconds": w.seconds,
        "requests": w.requests,
        "errors": w.errors,
        "tokens_in_window": w.tokens_in_window,
        "throughput_tokens_per_s": w.tokens_in_window / w.seconds if w.seconds else 0.0,
        "window_throughputs": [x.tokens_in_window / x.seconds for x in windows if x.seconds],
        "ttft_p50_s": percentile(w.ttft_s, 0.5),
        "ttft_p99_s": percentile(w.ttft_s, 0.99),
        "itl_p50_s": percentile(w.itl_s, 0.5),
        "itl_p99_s": percentile(w.itl_s, 0.99),
        "tpot_median_s": statistics.median(w.tpot_s) if w.tpot_s else None,
        "queue_p50_s": percentile(w.queue_s, 0.5),
        "queue_p99_s": percentile(w.queue_s, 0.99),
    }


def run_load(
    systems: dict[str, tuple[generation_pb2_grpc.GenerationStub, dict[str, Any]]],
    prompts: Sequence[list[int]],
    max_tokens: int,
    concurrency: Sequence[int],
    seconds: float,
    slices: int = 2,
    tick: Callable[[str], None] = lambda _label: None,
    cpus: frozenset[int] | None = None,
) -> list[dict[str, Any]]:
    """Every system at every concurrency; ``systems`` maps a name to the router to send to and
    the request fields; the clients' threads run on ``cpus`` (None: where the OS puts them; many
    clients are real work, which the verifier's CPUs should not carry)."""
    points = []
    for n in concurrency:
        windows: dict[str, list[Window]] = {name: [] for name in systems}
        for s in range(slices):
            names = list(systems) if s % 2 == 0 else list(reversed(systems))
            for name in names:

                def make(
                    client: int, i: int, name: str = name, n: int = n
                ) -> generation_pb2.GenerateRequest:
                    ids = prompts[(client + i * max(1, n)) % len(prompts)]
                    return generation_pb2.GenerateRequest(
                        prompt_token_ids=generation_pb2.TokenIds(ids=ids),
                        max_tokens=max_tokens,
                        request_id=request_id("load", name, n, client, i),
                        **systems[name][1],
                    )

                stub = systems[name][0]
                windows[name].append(run_window(stub, make, n, seconds / slices, cpus))
                tick(f"{name} x{n}")
        points += [point(name, n, w) for name, w in windows.items()]
    return points


def crossover(points: list[dict[str, Any]], spec: str, base: str) -> dict[str, Any]:
    """Throughput of ``spec`` over ``base`` per concurrency, and where ``spec`` first loses.

    A loss counts when the two systems' windows agree on it: the ratio is below 1 over the
    whole point and in every window taken alone (the windows alternate A B, B A, so a drift of
    the machine lands on both systems in turn). A point below 1 overall that some window
    contradicts is *level*: its gap is within what the windows' spread can show.
    """
    base_at = {p["concurrency"]: p for p in points if p["system"] == base}
    ratios, window_ratios = {}, {}
    for p in sorted((p for p in points if p["system"] == spec), key=lambda p: p["concurrency"]):
        n, b = p["concurrency"], base_at.get(p["concurrency"])
        if not b or not b["throughput_tokens_per_s"]:
            continue
        ratios[n] = p["throughput_tokens_per_s"] / b["throughput_tokens_per_s"]
        pairs = zip(p.get("window_throughputs", []), b.get("window_throughputs", []), strict=True)
        window_ratios[n] = [s / t for s, t in pairs if t]
    below = [n for n, r in ratios.items() if r < 1.0 and all(w < 1.0 for w in window_ratios[n])]
    level = [n for n, r in ratios.items() if r < 1.0 and n not in below]
    return {
        "ratio_by_concurrency": ratios,
        "window_ratios_by_concurrency": window_ratios,
        "first_concurrency_below_1": below[0] if below else None,
        "level_concurrencies": level,
        "min_ratio": min(ratios.values()) if ratios else None,
        "never_below_k0": not below if ratios else None,
    }
