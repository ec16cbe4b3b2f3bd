"""The target's decode step next to llama.cpp's per-token time on the same model, per thread count
and precision: the engine-speed figure of BENCHMARKS.md.

For each precision (fp32, bf16) and thread count (1, 2 by default) this starts ``llama-server``
on the demo target's GGUF of that precision (``make peer-llamacpp`` writes them) with that many
threads, and loads the target with specdec's engine in that dtype with that many torch threads.
Then it alternates blocks: llama-server generates 64 tokens greedily from a fixed prompt (its
own ``predicted_per_token_ms``: decode only, no HTTP), and, once llama-server's threads have
stopped polling for work, the engine times 16 decode steps and 16 verify steps of 5 tokens at
the same context, rolled back each time. Medians per system;
a busy machine slows both alike because the blocks alternate. Nothing here asserts a speed.

    make bench-step
    python benchmarks/step_vs_llamacpp.py --threads 1 --dtypes fp32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from specdec.bench.llamacpp_peer import (
    LlamaServer,
    completion_body,
    find_server,
    parse_completion,
    server_argv,
)
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.runner import ModelRunner
from specdec.router.redis_server import free_loopback_port

DTYPES = {"fp32": (torch.float32, "f32"), "bf16": (torch.bfloat16, "bf16")}
PROMPT = list(range(10, 110))  # token ids: 100 of them, the same for both engines
NEW_TOKENS = 64  # llama-server's generation; the engine steps at the middle of that span
SETTLE_S = 0.5  # after a completion llama-server's threads poll for more work a while


def engine_times(runner: ModelRunner, slot: int, steps: int) -> tuple[list[float], list[float]]:
    """Seconds of ``steps`` decode steps and as many 5-token verify steps, interleaved."""
    base = len(PROMPT) + NEW_TOKENS // 2
    decode, verify = [], []
    for _ in range(steps):
        decode.append(runner.timed_step(slot, base, 1))
        verify.append(runner.timed_step(slot, base, 5))
    return decode, verify


def measure(model: str, gguf: Path, dtype: torch.dtype, threads: int, blocks: int) -> dict:
    binary = find_server(None)
    if binary is None:
        raise SystemExit("no llama-server: make peer-llamacpp")
    torch.set_num_threads(threads)
    runner = ModelRunner(load_model(model, dtype, "cpu"), num_slots=1, max_seq_len=512)
    slot = runner.cache.allocate()
    prefix = PROMPT + [1] * (NEW_TOKENS // 2)
    runner.step([Chunk(slot, prefix, 0, 1)])
    port = free_loopback_port()
    llama_ms: list[float] = []
    decode: list[float] = []
    verify: list[float] = []
    with tempfile.TemporaryFile("w+") as log:
        server = LlamaServer(server_argv(binary, gguf, port, threads, 512), port, log)
        try:
            for block in range(blocks + 1):  # block 0 warms both up
                _, timings = parse_completion(server.complete(completion_body(PROMPT, NEW_TOKENS)))
                time.sleep(SETTLE_S)
                d, v = engine_times(runner, slot, 16)
                if block:
                    llama_ms.append(timings["predicted_per_token_ms"])
                    decode += d
                    verify += v
        finally:
            server.close()
    return {
        "llama_ms": statistics.median(llama_ms),
        "decode_ms": statistics.median(decode) * 1e3,
        "verify5_ms": statistics.median(verify) * 1e3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/demo-target")
    p.add_argument("--gguf-dir", default="build/gguf")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--blocks", type=int, default=8, help="alternating blocks per system")
    a = p.parse_args()
    name = Path(a.model).name
    print(
        "| precision | threads | llama.cpp ms/token | specdec decode ms | ratio | verify(5) ms"
        " | verify(5) ÷ decode |"
    )
    print("|---|---|---|---|---|---|---|")
    for key in a.dtypes.split(","):
        dtype, gguf_type = DTYPES[key]
        gguf = Path(a.gguf_dir) / f"{name}-{gguf_type}.gguf"
        if not gguf.is_file():
            raise SystemExit(f"{gguf} missing: make peer-llamacpp converts the pair")
        for threads in (int(t) for t in a.threads.split(",")):
            r = measure(a.model, gguf, dtype, threads, a.blocks)
            print(
                f"| {key} | {threads} | {r['llama_ms']:.2f} | {r['decode_ms']:.2f} | "
                f"{r['decode_ms'] / r['llama_ms']:.2f}× | {r['verify5_ms']:.2f} | "
                f"{r['verify5_ms'] / r['decode_ms']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
