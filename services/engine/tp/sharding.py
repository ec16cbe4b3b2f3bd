"""Which slice of each weight a tensor-parallel rank owns (Megatron / gpt-fast layout).

Pure functions of the model config, the world size and the rank; no torch. Column-parallel
weights (q/k/v, gate/up, the LM head, the embedding's vocabulary) are split by output rows,
row-parallel ones (o, down) by input columns. Attention heads split evenly; KV heads split too,
or, when there are fewer KV heads than ranks, each rank keeps the one KV head its query heads
read (replicated on ``world / num_kv_heads`` ranks). The vocabulary splits into equal shards of
``ceil(V / world)`` rows, the last padded with zero rows that the logit gather drops.
Non-goals: sequence or pipeline parallelism, uneven head splits.
"""

from __future__ import annotations

from dataclasses import dataclass

from specdec.core.errors import CheckpointError
from specdec.core.model_config import ModelConfig


class ShardingError(CheckpointError):
    """The model cannot be split over this many ranks; the message says which dimension."""


@dataclass(frozen=True)
class Span:
    """Rows [start, stop) of a dimension."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class RankShard:
    """What rank ``rank`` of ``world`` holds. Spans index heads, rows or tokens, not bytes."""

    rank: int
    world: int
    q_heads: Span  # query heads of this rank
    kv_heads: Span  # KV heads this rank keeps (and caches)
    intermediate: Span  # MLP rows of gate/up, columns of down
    vocab: Span  # vocabulary rows of the embedding and LM head that exist in the checkpoint
    vocab_padded: int  # rows per rank's vocabulary shard, padding included (same on every rank)


def plan(cfg: ModelConfig, world: int, rank: int) -> RankShard:
    """The shard of ``rank``; ``ShardingError`` naming the dimension when ``world`` does not fit."""
    if world < 1 or not 0 <= rank < world:
        raise ShardingError(f"rank {rank} is not in a world of {world}")
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    if heads % world:
        raise ShardingError(
            f"num_attention_heads ({heads}) is not a multiple of --tensor-parallel {world}; "
            "pick a tensor-parallel size that divides it"
        )
    if kv % world and world % kv:
        raise ShardingError(
            f"num_key_value_heads ({kv}) and --tensor-parallel {world}: one must divide the "
            "other (KV heads are split, or replicated when there are fewer than ranks)"
        )
    if cfg.intermediate_size % world:
        raise ShardingError(
            f"intermediate_size ({cfg.intermediate_size}) is not a multiple of "
            f"--tensor-parallel {world}"
        )
    if cfg.head_vocab_size is not None:
        raise ShardingError("a reduced-vocabulary LM head (a draft's) is not tensor-parallel")
    per_rank = heads // world
    group = heads // kv  # query heads per KV head
    q = Span(rank * per_rank, (rank + 1) * per_rank)
    kv_start = q.start // group
    kv_heads = Span(kv_start, kv_start + max(1, per_rank // group))
    inter = cfg.intermediate_size // world
    vocab_rows = -(-cfg.vocab_size // world)
    v_start = min(rank * vocab_rows, cfg.vocab_size)
    return RankShard(
        rank=rank,
        world=world,
        q_heads=q,
        kv_heads=kv_heads,
        intermediate=Span(rank * inter, (rank + 1) * inter),
        vocab=Span(v_start, min(v_start + vocab_rows, cfg.vocab_size)),
        vocab_padded=vocab_rows,
    )


def local_config(cfg: ModelConfig, shard: RankShard) -> ModelConfig:
    """The config of one rank's single-device model: its heads, MLP rows and vocabulary rows."""
    from dataclasses import replace

    return replace(
        cfg,
        num_attention_heads=shard.q_heads.size,
        num_key_value_heads=shard.kv_heads.size,
        intermediate_size=shard.intermediate.size,
        vocab_size=shard.vocab_padded,
    )
