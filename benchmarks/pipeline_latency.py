"""One request at a time: tokens/s through the pipeline (k = 0, fixed k, the default policy)
next to in-process speculative decoding and in-process target-only decoding, measured side by
side in one run (systems interleaved per prompt, medians and ratios to pipeline k = 0).

Greedy throughout; every system's tokens are checked against target-only decoding.

    python benchmarks/pipeline_latency.py --target models/demo-target --draft models/demo-draft
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from specdec.engine.checkpoint import load_model
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate
from specdec.engine.tokenizer import Tokenizer
from specdec.local_pipeline import Pipeline
from specdec.v1 import generation_pb2

PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n",
    "for i, line in enumerate(lines):\n    if not line.strip():\n",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="models/demo-target")
    ap.add_argument("--draft", default="models/demo-draft")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    tokenizer = Tokenizer.from_folder(args.target)
    pipe = Pipeline(args.target, args.draft, max_context_tokens=1024).start()
    client = pipe.client()
    target = ModelRunner(load_model(args.target), num_slots=1, max_seq_len=1024)
    draft = ModelRunner(load_model(args.draft), num_slots=1, max_seq_len=1024)
    greedy = SamplingParams()

    def via_pipeline(**fields: object) -> Callable[[list[int]], list[int]]:
        def run(ids: list[int]) -> list[int]:
            req = generation_pb2.GenerateRequest(
                prompt_token_ids=generation_pb2.TokenIds(ids=ids),
                max_tokens=args.max_tokens,
                **fields,
            )
            return [t for r in client.Generate(req) for t in r.token_ids]

        return run

    def in_process(spec: bool) -> Callable[[list[int]], list[int]]:
        def run(ids: list[int]) -> list[int]:
            proposer = DraftModelProposer(draft) if spec else None
            return generate(
                target, ids, greedy, args.max_tokens, proposer, args.k if spec else 0
            ).token_ids

        return run

    systems = {
        "pipeline k=0": via_pipeline(draft_method=generation_pb2.DRAFT_METHOD_NONE),
        f"pipeline k={args.k}": via_pipeline(
            depth_policy=generation_pb2.DEPTH_POLICY_FIXED, fixed_depth=args.k
        ),
        "pipeline goodput": via_pipeline(),
        "in-process target-only": in_process(False),
        f"in-process k={args.k}": in_process(True),
    }
    rates: dict[str, list[float]] = {name: [] for name in systems}
    for fn in systems.values():  # warm-up
        fn(tokenizer.encode(PROMPTS[0]))
    mismatches = 0
    for _ in range(args.repeats):
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt)
            expected = None
            for name, fn in systems.items():  # interleaved: every system on the same prompt
                start = time.perf_counter()
                out = fn(ids)
                rates[name].append(len(out) / (time.perf_counter() - start))
                expected = expected or out
                mismatches += out != expected
    pipe.close()
    base = statistics.median(rates["pipeline k=0"])
    print(
        f"target {args.target}, draft {args.draft}, {args.max_tokens} tokens, greedy, "
        f"{len(PROMPTS)} prompts x {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'system':<26}{'tok/s':>9}{'vs pipeline k=0':>18}")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"{name:<26}{med:>9.1f}{med / base:>17.2f}x")
    print(f"outputs differing from target-only: {mismatches}")


if __name__ == "__main__":
    main()
