"""Engine micro-benchmark: what verifying k tokens costs next to one decode step, and what
batching 8 sessions buys over running them one after another.

Builds a ~30M-parameter random Llama in memory (no checkpoint needed), prefills each slot with a
prompt, then times steps with the systems interleaved so machine drift cancels. Prints medians
and ratios measured in this one run. Not a test: nothing here asserts a speed.
``--compile`` also compiles the forward (``engine/compiled.py``) and times every step both ways,
eager and compiled interleaved; ``--model`` loads a checkpoint (packed linears, as served).

    make bench-engine            # or: python benchmarks/engine_step.py --device cuda --dtype bf16
    python benchmarks/engine_step.py --model models/demo-target --compile --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from specdec.core.model_config import ModelConfig
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

SHAPES = {
    # ~30M parameters: the size of the demo target.
    "30m": dict(
        vocab_size=8000,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
    ),
    # Llama-3-8B's shape, for GPUs.
    "8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
    ),
}


def build_runner(
    shape: str,
    device: str,
    dtype: torch.dtype,
    slots: int,
    ctx: int,
    model_dir: str | None = None,
    compile: bool = False,
) -> ModelRunner:
    if model_dir:
        model = load_model(model_dir, dtype, device)
    else:
        cfg = ModelConfig(
            model_type="llama", max_position_embeddings=ctx, rope_theta=500000.0, **SHAPES[shape]
        )  # type: ignore[arg-type]
        torch.manual_seed(0)
        with torch.device(device):
            model = DecoderModel(cfg).to(dtype).eval().requires_grad_(False).fuse_projections()
    return ModelRunner(model, num_slots=slots, max_seq_len=ctx, compile=compile)


def timed(fn: Callable[[], None], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=SHAPES, default="30m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", help="checkpoint folder instead of a random --shape")
    ap.add_argument("--compile", action="store_true", help="time eager and compiled steps")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    runner = build_runner(
        args.shape,
        args.device,
        dtype,
        args.batch,
        args.prompt_len + 64,
        args.model,
        args.compile,
    )
    if runner.compiled is not None:
        start = time.perf_counter()
        runner.warm_compiled()
        print(f"compiled in {time.perf_counter() - start:.1f} s ({runner.compiled.failed or 'ok'})")
    params = sum(p.numel() for p in runner.model.parameters())
    print(
        f"model: {args.model or args.shape} ({params / 1e6:.1f}M params), "
        f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}, "
        f"prompt {args.prompt_len} tokens"
    )

    gen = torch.Generator().manual_seed(0)
    slots = [runner.cache.allocate() for _ in range(args.batch)]
    for s in slots:  # prefill every slot
        prompt = torch.randint(0, runner.vocab_size, (args.prompt_len,), generator=gen).tolist()
        runner.step([Chunk(s, prompt, 0, 1)])
    base = args.prompt_len

    def verify(n_tokens: int, batch: list[int]) -> Callable[[], None]:
        def run() -> None:
            runner.step([Chunk(s, [1] * n_tokens, base, n_tokens) for s in batch])
            for s in batch:
                runner.cache.rollback_to(s, base)

        return run

    def toggled(fn: Callable[[], None], mode: str) -> Callable[[], None]:
        def run() -> None:
            assert runner.compiled is not None
            runner.compiled.ready = mode == "compiled"
            fn()

        return run

    def sequential(n_tokens: int, batch: list[int]) -> Callable[[], None]:
        def run() -> None:
            for s in batch:
                runner.step([Chunk(s, [1] * n_tokens, base, n_tokens)])
                runner.cache.rollback_to(s, base)

        return run

    systems = {f"verify k={k} ({k + 1} tokens)": verify(k + 1, slots[:1]) for k in (1, 2, 4, 8)}
    systems = {"decode (1 token)": verify(1, slots[:1]), **systems}
    systems[f"batched decode x{args.batch}"] = verify(1, slots)
    systems[f"sequential decode x{args.batch}"] = sequential(1, slots)
    systems[f"batched verify k=4 x{args.batch}"] = verify(5, slots)
    if runner.compiled is not None:
        systems = {
            f"{mode} {name}": toggled(fn, mode)
            for name, fn in systems.items()
            for mode in ("eager", "compiled")
        }
    times: dict[str, list[float]] = {name: [] for name in systems}
    for fn in systems.values():  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved: A B C ... A B C ...
        for name, fn in systems.items():
            times[name].append(timed(fn, args.device))
    med = {name: statistics.median(t) for name, t in times.items()}
    if runner.compiled is not None:
        print(f"\n{'step':<32}{'eager ms':>10}{'compiled ms':>13}{'speed-up':>10}")
        for name in [n.removeprefix("eager ") for n in med if n.startswith("eager ")]:
            eager, comp = med[f"eager {name}"], med[f"compiled {name}"]
            print(f"{name:<32}{eager * 1e3:>10.2f}{comp * 1e3:>13.2f}{eager / comp:>9.2f}x")
        return
    decode = med["decode (1 token)"]
    print(f"\n{'step':<28}{'median ms':>12}{'x decode':>10}")
    for name, t in med.items():
        if "x" + str(args.batch) not in name:
            print(f"{name:<28}{t * 1e3:>12.2f}{t / decode:>10.2f}")
    batched, seq = med[f"batched decode x{args.batch}"], med[f"sequential decode x{args.batch}"]
    print(f"\n{args.batch} sessions, one decode token each:")
    print(f"  batched    {batched * 1e3:8.2f} ms  {args.batch / batched:8.1f} tok/s")
    print(f"  sequential {seq * 1e3:8.2f} ms  {args.batch / seq:8.1f} tok/s")
    print(f"  batched / sequential throughput: {seq / batched:.2f}x")
    if args.device.startswith("cuda"):
        weight_bytes = sum(p.numel() * p.element_size() for p in runner.model.parameters())
        bound = weight_bytes / 4.8e12
        print(
            f"\ndecode step {decode * 1e3:.2f} ms vs HBM bound {bound * 1e3:.2f} ms "
            f"(weights {weight_bytes / 1e9:.1f} GB / 4.8 TB/s): {bound / decode:.0%} of peak"
        )


if __name__ == "__main__":
    main()
