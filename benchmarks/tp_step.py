"""Tensor-parallel step cost: one decode step and one verify(k) step at TP = 1 and TP = 2.

Writes a random Llama-shaped checkpoint (``--shape``, or loads ``--model``), then for each
configuration starts it as the verifier would (TP = 1: ``load_model`` in this process; TP = 2:
``engine.tp.launch.start_leader``, rank 1 a spawned process, gloo on CPUs or NCCL on GPUs),
prefills one slot and times steps, rolled back after each. Prints the median step times and the
peak resident memory of every rank (VmHWM), and on GPUs the HBM bound of each step (the weights
a rank reads once per step at ``--hbm-tbps``). Each configuration runs in its own process, so
peaks and thread settings do not leak between them. Not a test: nothing here asserts a speed.

    python benchmarks/tp_step.py                    # CPU: TP=1 at 1 and 2 threads, TP=2
    python benchmarks/tp_step.py --device cuda --dtype bf16 --shape 1b
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from specdec.core.model_config import ModelConfig
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model, save_model
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

SHAPES = {
    "100m": dict(
        vocab_size=16384,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        head_dim=64,
    ),
    "1b": dict(  # Llama-3.2-1B's shape
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
    ),
}


def write_model(shape: str, folder: Path, dtype: torch.dtype) -> Path:
    cfg = ModelConfig(
        model_type="llama", max_position_embeddings=2048, eos_token_ids=(0,), **SHAPES[shape]
    )  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = DecoderModel(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return save_model(model, folder, dtype)


def vm_hwm(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    return 0


def weight_bytes(runner: ModelRunner) -> int:
    model = getattr(runner.model, "local", runner.model)  # a TP rank's own share
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def run_one(args: argparse.Namespace) -> dict:
    """One configuration, in this process: time the steps, measure the ranks."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(args.threads)
    leader = None
    if args.tp == 1:
        runner = ModelRunner(load_model(args.model, dtype, args.device), 2, args.ctx)
    else:
        from specdec.engine.tp.launch import TPSpec, rank_devices, split_cpus, start_leader

        cpus = split_cpus(args.tp) if args.device == "cpu" else ()
        spec = TPSpec(
            args.model, args.tp, rank_devices(args.tp, args.device), dtype, 2, args.ctx,
            cpu_sets=cpus,
        )  # fmt: skip
        leader = start_leader(spec)
        runner = leader.runner
    slot = runner.cache.allocate()
    runner.step([Chunk(slot, [1] * args.prompt_len, 0, 1)])
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else lambda: None

    def median_ms(n_tokens: int) -> float:
        times = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            runner.step([Chunk(slot, [1] * n_tokens, args.prompt_len, n_tokens)])
            sync()
            times.append(time.perf_counter() - start)
            runner.cache.rollback_to(slot, args.prompt_len)
        return 1e3 * statistics.median(times)

    median_ms(1)  # warm
    out = {
        "tp": args.tp,
        "threads": args.threads,
        "decode_ms": median_ms(1),
        f"verify{args.k}_ms": median_ms(args.k + 1),
        "weights_per_rank_mb": weight_bytes(runner) / 2**20,
        "peak_rss_mb": [vm_hwm() >> 20],
    }
    if leader is not None:
        out["peak_rss_mb"] += [vm_hwm(p.pid) >> 20 for p in leader.processes]
        leader.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=SHAPES, default="100m")
    ap.add_argument("--model", help="checkpoint folder instead of a random --shape")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("-k", type=int, default=4, help="drafts per verify step (k+1 tokens)")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--hbm-tbps", type=float, default=4.8, help="per-GPU HBM bandwidth (H200)")
    ap.add_argument("--tp", type=int, default=0, help=argparse.SUPPRESS)  # one configuration
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tp:
        print(json.dumps(run_one(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(write_model(args.shape, Path(tmp) / "m", torch.bfloat16))
        configs = [(1, 1), (1, 2), (2, 1)] if args.device == "cpu" else [(1, 1), (2, 1)]
        for tp, threads in configs:
            cmd = [sys.executable, __file__, "--tp", str(tp), "--threads", str(threads)]
            cmd += ["--model", model, "--device", args.device, "--dtype", args.dtype]
            cmd += ["--prompt-len", str(args.prompt_len), "--ctx", str(args.ctx)]
            cmd += ["-k", str(args.k), "--repeats", str(args.repeats)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            result = json.loads(line.strip().splitlines()[-1])
            if args.device.startswith("cuda"):
                bound_ms = result["weights_per_rank_mb"] * 2**20 / (args.hbm_tbps * 1e12) * 1e3
                result["hbm_bound_ms"] = round(bound_ms, 3)
            print(
                json.dumps(
                    {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
                )
            )


if __name__ == "__main__":
    main()
