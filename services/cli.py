"""The ``specdec`` command line: ``generate`` now; ``up`` and ``serve`` arrive with the pipeline.

Subcommands stay thin: parse flags, call the library, print. Errors a user can fix print one
line and exit 2; no stack traces.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from specdec.engine.errors import SpecdecError

PIPELINE_NOT_YET = (
    "specdec {cmd}: the distributed pipeline (router, draft, verifier) is not built yet.\n"
    "Today specdec runs in one process: specdec generate --in-process --target DIR [--draft DIR]"
)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text (in-process for now)",
        description="Generate a continuation of PROMPT.",
    )
    p.add_argument("prompt", help="prompt text; '-' reads it from standard input")
    p.add_argument(
        "--in-process", action="store_true", help="run the models in this process (no services)"
    )
    p.add_argument("--target", help="target model folder (Hugging Face format)")
    p.add_argument("--draft", help="draft model folder sharing the target's tokenizer")
    p.add_argument("--ngram", action="store_true", help="draft by prompt lookup instead of a model")
    p.add_argument("--k", type=int, default=4, help="speculation depth per round (default 4)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    sub.add_parser("up", help="start router, draft, verifier and Redis locally (not yet)")
    serve = sub.add_parser("serve", help="run one service (not yet)")
    serve.add_argument("role", choices=["router", "draft", "verifier"])
    return parser


def _run_generate(args: argparse.Namespace) -> int:
    if not args.in_process:
        print(PIPELINE_NOT_YET.format(cmd="generate without --in-process"), file=sys.stderr)
        return 2
    if not args.target:
        print("specdec generate: --target DIR is required with --in-process", file=sys.stderr)
        return 2
    if args.draft and args.ngram:
        print("specdec generate: choose --draft DIR or --ngram, not both", file=sys.stderr)
        return 2
    from specdec.engine.local import run_in_process  # torch is imported only here

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    out = run_in_process(
        target=args.target,
        draft=args.draft,
        ngram=args.ngram,
        prompt=prompt,
        k=args.k,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        max_tokens=args.max_tokens,
        device=args.device,
    )
    if args.json:
        print(json.dumps(out))
    else:
        print(out["text"])
        print(_stats_line(out), file=sys.stderr)
    return 0


def _stats_line(out: dict[str, Any]) -> str:
    s = out["stats"]
    return (
        f"[{s['output_tokens']} tokens in {s['elapsed_s']:.2f}s, "
        f"{s['tokens_per_s']:.1f} tok/s, {s['rounds']} rounds, "
        f"accepted {s['accepted_tokens']}/{s['draft_tokens']} drafts, "
        f"finish: {out['finish_reason']}]"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _run_generate(args)
        print(PIPELINE_NOT_YET.format(cmd=args.command), file=sys.stderr)
        return 2
    except SpecdecError as exc:
        print(f"specdec: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
