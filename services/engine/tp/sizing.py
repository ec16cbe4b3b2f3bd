"""Memory and bandwidth of a tensor-parallel target, from its config: the deployment arithmetic.

Per rank: the bytes of the weights it holds (counted from ``sharding.plan``, the same slices
``loading`` reads, so replicated KV heads and vocabulary padding are included), the KV-cache
bytes of one token, how many slots of a given context fit in what memory is left, and the
time one step needs at least to read the rank's weights from memory (the bandwidth bound of a
decode or verify step: every weight is read once, whatever k).

    python -m specdec.engine.tp.sizing path/to/config.json --context 8192 --gpu-gb 141 --tbps 4.8

Non-goals: activation memory (``--reserve`` covers it, with the runtime's own), compute bounds.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from specdec.core.model_config import ModelConfig
from specdec.engine.tp.sharding import ShardingError, plan


@dataclass(frozen=True)
class RankSize:
    """One rank's share at tensor-parallel size ``world``."""

    world: int
    weight_bytes: int
    kv_bytes_per_token: int

    def slots(self, context: int, memory_bytes: float) -> int:
        """Sequences of ``context`` tokens whose KV fits beside the weights (0 if none)."""
        free = memory_bytes - self.weight_bytes
        return max(0, int(free // (context * self.kv_bytes_per_token)))

    def step_ms(self, bandwidth_bytes_s: float) -> float:
        """Milliseconds to read the rank's weights once: no step is faster."""
        return 1e3 * self.weight_bytes / bandwidth_bytes_s


def rank_size(cfg: ModelConfig, world: int, dtype_bytes: int = 2) -> RankSize:
    """Rank 0's bytes (every rank holds the same shapes) at ``world`` ranks."""
    shard = plan(cfg, world, 0)
    h, d = cfg.hidden_size, cfg.head_dim
    q, kv, inter = shard.q_heads.size * d, shard.kv_heads.size * d, shard.intermediate.size
    attn = h * (q + 2 * kv) + q * h + (2 * d if cfg.qk_norm else 0)
    if cfg.attention_bias:
        attn += q + 2 * kv
    if cfg.attention_out_bias:
        attn += h
    mlp = 3 * h * inter + ((2 * inter + h) if cfg.mlp_bias else 0)
    layer = attn + mlp + 2 * h  # two norms, whole on every rank
    vocab = shard.vocab_padded * h * (1 if cfg.tie_word_embeddings else 2)
    params = cfg.num_hidden_layers * layer + vocab + h
    kv_token = cfg.num_hidden_layers * 2 * shard.kv_heads.size * d * dtype_bytes
    return RankSize(world, params * dtype_bytes, kv_token)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="a Hugging Face config.json")
    ap.add_argument("--context", type=int, default=8192, help="tokens per slot")
    ap.add_argument("--gpu-gb", type=float, default=141.0, help="memory per device, GB (1e9)")
    ap.add_argument("--reserve", type=float, default=0.10, help="fraction kept for the runtime")
    ap.add_argument("--tbps", type=float, default=4.8, help="memory bandwidth per device, TB/s")
    ap.add_argument("--tp", default="1,2,4,8", help="tensor-parallel sizes")
    args = ap.parse_args()
    cfg = ModelConfig.from_hf_dict(json.loads(args.config.read_text()), str(args.config))
    usable = args.gpu_gb * 1e9 * (1 - args.reserve)
    print("| TP | weights/GPU GB | KV/token/GPU KiB | slots at context | bound per step ms |")
    print("|---|---|---|---|---|")
    for world in (int(t) for t in args.tp.split(",")):
        try:
            size = rank_size(cfg, world)
        except ShardingError as exc:
            print(f"| {world} | {exc} | | | |")
            continue
        print(
            f"| {world} | {size.weight_bytes / 1e9:.1f} | {size.kv_bytes_per_token / 1024:g} | "
            f"{size.slots(args.context, usable)} | {size.step_ms(args.tbps * 1e12):.2f} |"
        )


if __name__ == "__main__":
    main()
