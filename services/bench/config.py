"""What one ``specdec bench`` run measures: a typed config, its command-line flags, ``--quick``.

Every field has a full-run default and a ``--quick`` default (a smoke run for ``make test`` that
checks the harness, not the speed); a flag given explicitly wins over both.
Non-goals: config files; importing torch (the CLI parser builds this without loading models).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_POLICY = "goodput"  # the router's default depth policy (RouterConfig.default_policy)


@dataclass(frozen=True)
class BenchConfig:
    target: str = "models/demo-target"  # target model folder (also the tokenizer)
    draft: str = "models/demo-draft"  # draft model folder
    addr: str | None = None  # a running router; None: start the pipeline (separate processes)
    tls_ca: str | None = None  # reach --addr over TLS, trusting this CA (API key: $SPECDEC_API_KEY)
    one_process: bool = False  # start the three services inside the bench's own process
    out: str = "bench-out"  # folder for result.json, REPORT.md and the plots
    workload: str = "all"  # code, prose or all
    prompts_dir: str | None = None  # None: benchmarks/prompts in the repository
    num_prompts: int | None = None  # prompts in all (workloads alternate); None: every one
    max_tokens: int = 64  # tokens to generate per request (fewer when eos comes first)
    repeats: int = 1  # passes over the prompts in latency mode
    fixed_k: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)  # fixed depths: pipeline and in-process
    policies: tuple[str, ...] = ("heuristic", "goodput")  # adaptive depth policies
    default_policy: str = DEFAULT_POLICY  # the policy the headline and load mode use
    ahead_off: bool = True  # also run the default policy (and one fixed k) with draft-ahead off
    concurrency: tuple[int, ...] = (1, 4, 16, 32)  # closed-loop clients per load point
    load_seconds: float = 20.0  # measuring window per load point and system
    latency: bool = True  # run latency mode (and time to first token)
    load: bool = True  # run load mode
    overhead: bool = True  # run overhead mode (a near-zero-cost model, separate processes)
    overhead_requests: int = 40  # requests per system in overhead mode
    http_face: bool = True  # compare the HTTP face with the gRPC face when the router serves HTTP
    http_addr: str | None = None  # with --addr: HOST:PORT of that router's OpenAI HTTP API
    ttft_repeats: int = 20  # passes of the time-to-first-token comparison
    hf: bool = True  # run transformers greedy and assisted generation
    hf_assistant_tokens: int | None = None  # num_assistant_tokens; None: transformers' default
    llamacpp: bool = True  # run llama-server target-only and with the draft, when it is there
    llama_server: str | None = None  # llama-server binary; None: PATH, then .venv/bin
    gguf_dir: str = "build/gguf"  # where make peer-llamacpp writes <model folder>-f32.gguf
    threads: int | None = None  # torch threads in this process; None: torch's default
    cost_repeats: int = 30  # timed decode steps per model when measuring the cost ratio c
    quick: bool = False
    command: str = ""  # the command line, for the report

    @property
    def max_concurrency(self) -> int:
        return max(self.concurrency, default=1) if self.load else 1


# What ``--quick`` changes (2 prompts, 8 tokens, k in {0, 2}, one policy, 2 load points, no
# transformers, no llama.cpp).
QUICK: dict[str, Any] = dict(
    num_prompts=2,
    max_tokens=8,
    fixed_k=(2,),
    policies=(DEFAULT_POLICY,),
    concurrency=(1, 2),
    overhead_requests=2,
    ttft_repeats=2,
    load_seconds=1.5,
    hf=False,
    llamacpp=False,
    cost_repeats=5,
)


def _int_list(text: str) -> tuple[int, ...]:
    """``1,2,4`` or ``1-8`` (or a mix: ``1-4,8``)."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, sep, hi = part.partition("-")
        out += range(int(lo), int(hi) + 1) if sep else [int(lo)]
    return tuple(out)


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (s.strip() for s in text.split(","))))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``specdec bench`` flags. Defaults are None here so that ``--quick`` can tell which
    flags were given; ``from_args`` fills in the rest."""
    d = BenchConfig()
    p.add_argument(
        "--pair",
        choices=("tiny", "real"),
        help="a known pair instead of --target/--draft: the committed tiny demo pair, or the "
        "real pair `specdec models fetch` got (run the bench once per pair to compare them)",
    )
    p.add_argument("--target", help=f"target model folder (default {d.target})")
    p.add_argument("--draft", help=f"draft model folder (default {d.draft})")
    p.add_argument("--addr", help="HOST:PORT of a running router (default: start the services)")
    p.add_argument(
        "--tls-ca",
        help="with --addr: TLS, trusting this CA (an API key comes from $SPECDEC_API_KEY, so it "
        "stays out of the report)",
    )
    p.add_argument(
        "--one-process",
        action="store_true",
        default=None,
        help="start the three services inside the bench's process (default: separate processes,"
        " as specdec up starts them)",
    )
    p.add_argument("--out", help=f"output folder (default {d.out})")
    p.add_argument("--workload", choices=["code", "prose", "all"], help="prompt set (default all)")
    p.add_argument("--prompts-dir", help="folder of <workload>.jsonl files")
    p.add_argument("--num-prompts", type=int, help="prompts in all (default: every prompt)")
    p.add_argument("--max-tokens", type=int, help=f"tokens per request (default {d.max_tokens})")
    p.add_argument("--repeats", type=int, help="latency passes over the prompts (default 1)")
    p.add_argument("--fixed-k", type=_int_list, help="fixed depths, e.g. 1-8 or 2,4 (default 1-8)")
    p.add_argument(
        "--policies", type=_str_list, help="adaptive policies (default heuristic,goodput)"
    )
    p.add_argument(
        "--default-policy", help=f"policy for the headline and load (default {d.default_policy})"
    )
    p.add_argument(
        "--ahead-off",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the default policy and one fixed k with draft-ahead off (default: on)",
    )
    p.add_argument("--concurrency", type=_int_list, help="load-mode clients (default 1,4,16,32)")
    p.add_argument(
        "--load-seconds", type=float, help="window per load point and system (default 20)"
    )
    p.add_argument(
        "--no-latency", dest="latency", action="store_false", default=None, help="skip latency"
    )
    p.add_argument("--no-load", dest="load", action="store_false", default=None, help="skip load")
    p.add_argument(
        "--overhead",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the split's overhead per round on a near-zero-cost model (default: on)",
    )
    p.add_argument("--overhead-requests", type=int, help="requests per system (default 40)")
    p.add_argument(
        "--http-face",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="streamed /v1/completions against streamed gRPC Generate on the same router, "
        "batch 1: the ms the HTTP face adds per chunk (default: on when the router serves HTTP: "
        "always when the bench starts it, with --addr only given --http-addr)",
    )
    p.add_argument(
        "--http-addr", help="with --addr: HOST:PORT of that router's OpenAI-compatible HTTP API"
    )
    p.add_argument("--ttft-repeats", type=int, help="time-to-first-token passes (default 20)")
    p.add_argument(
        "--hf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run transformers greedy and assisted generation (default: on, off with --quick)",
    )
    p.add_argument("--hf-assistant-tokens", type=int, help="num_assistant_tokens for transformers")
    p.add_argument(
        "--llamacpp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run llama.cpp's llama-server target-only and with the draft when it and the GGUF"
        " files are there (default: on, off with --quick; make peer-llamacpp installs both)",
    )
    p.add_argument("--llama-server", help="llama-server binary (default: PATH, then .venv/bin)")
    p.add_argument("--gguf-dir", help=f"folder of <model>-f32.gguf files (default {d.gguf_dir})")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke run: checks the harness, not speed")


def from_args(args: argparse.Namespace, argv: list[str]) -> BenchConfig:
    """Explicit flags, else the ``--quick`` defaults when quick, else the full-run defaults."""
    cfg = replace(BenchConfig(), **(QUICK if args.quick else {}))
    given = {
        f.name: getattr(args, f.name)
        for f in fields(BenchConfig)
        if f.name != "command" and getattr(args, f.name, None) is not None
    }
    if given.get("prompts_dir") is not None:
        given["prompts_dir"] = str(Path(given["prompts_dir"]))
    if getattr(args, "pair", None) and "target" not in given:
        given.update(_pair_folders(args.pair))
    return replace(cfg, **given, command="specdec " + shlex.join(argv))


def _pair_folders(pair: str) -> dict[str, str]:
    """``--pair real``: the fetched real pair (an error if not fetched: the bench never
    downloads); ``--pair tiny``: the committed tiny pair."""
    from specdec.core.errors import SpecdecError
    from specdec.models.pair import default_pair

    found = default_pair(pair)
    if found.note or found.draft is None:
        raise SpecdecError(f"--pair {pair}: {found.note or 'no draft'}")
    return {"target": str(found.target), "draft": str(found.draft)}
