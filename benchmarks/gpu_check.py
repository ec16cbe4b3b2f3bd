"""Device check for the compiled step forward on CUDA: correctness, then a timing; minutes.

1. Correctness (fp32, TF32 off): a random ~30M Llama, compiled (``mode="reduce-overhead"``:
   CUDA graphs over the KV slabs marked static) against eager on the same runner, for prefill,
   decode and verify chunks at batch sizes 1-4 and several positions; logits within 1e-3.
2. Graph count: a mixed workload after warm-up must not make dynamo compile again.
3. Timing (bf16): eager against compiled, decode(1), verify(5) and batched steps, through
   ``benchmarks/engine_step.py --compile`` on the 30m shape and, with ``--big``, Llama-3-8B's.

    python benchmarks/gpu_check.py [--big]      # exit status 0: correct (timings are printed)
    python benchmarks/gpu_check.py --device cpu # steps 1-2 on a CPU (the same code path bar graphs)
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from specdec.engine.batch import Chunk
from specdec.engine.runner import ModelRunner

sys.path.insert(0, str(Path(__file__).parent))
from engine_step import build_runner

TOL = 1e-3


def check_correctness(runner: ModelRunner) -> float:
    """Largest |compiled - eager| logit over a mixed workload; fails on a new graph."""
    assert runner.compiled is not None
    gen = random.Random(0)
    slots = [runner.cache.allocate() for _ in range(4)]
    graphs = counters["stats"]["unique_graphs"]
    worst = 0.0
    for step in range(40):
        chunks = []
        for slot in gen.sample(slots, gen.randint(1, 4)):
            n = gen.choice([1, 1, 5, 5, 3, 64]) if step else 64
            start = runner.cache.length(slot)
            if start + n > runner.max_seq_len:
                runner.cache.rollback_to(slot, 0)
                start = 0
            ids = [gen.randrange(runner.vocab_size) for _ in range(n)]
            chunks.append(Chunk(slot, ids, start, gen.randint(1, n)))
        runner.compiled.ready = False
        eager = runner.step(chunks)
        for chunk in chunks:
            runner.cache.rollback_to(chunk.slot, chunk.start_pos)
        runner.compiled.ready = True
        compiled = runner.step(chunks)
        for e, c in zip(eager, compiled, strict=True):
            worst = max(worst, (e - c).abs().max().item())
    new = counters["stats"]["unique_graphs"] - graphs
    print(f"mixed workload: max |compiled - eager| = {worst:.2e}, new graphs after warm-up: {new}")
    assert new == 0, "the workload compiled graphs the warm-up had not"
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="also time Llama-3-8B's shape in bf16")
    ap.add_argument("--device", default="cuda", help="cpu: the correctness part only")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    runner = build_runner("30m", args.device, torch.float32, 4, 512, compile=True)
    start = time.perf_counter()
    runner.warm_compiled()
    assert runner.compiled is not None
    print(f"compiled in {time.perf_counter() - start:.1f} s: {runner.compiled.failed or 'ok'}")
    if not runner.compiled.ready:
        sys.exit(1)
    worst = check_correctness(runner)
    assert worst <= TOL, f"compiled logits differ from eager by {worst:.2e} > {TOL}"
    if args.device == "cpu":
        print("cpu check: OK")
        return
    here = Path(__file__).parent / "engine_step.py"
    shapes = ["30m", "8b"] if args.big else ["30m"]
    for shape in shapes:
        cmd = [sys.executable, str(here), "--shape", shape, "--device", "cuda", "--dtype", "bf16"]
        cmd += ["--compile", "--batch", "8", "--repeats", "20", "--prompt-len", "512"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    print("gpu check: OK")


if __name__ == "__main__":
    main()
