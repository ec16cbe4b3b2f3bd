"""One rank's share of a tensor-parallel decoder, run in step with the other ranks.

A rank holds a plain single-device ``DecoderModel`` built from its ``local_config`` (its query
and KV heads, its MLP rows, its vocabulary rows), so fused q/k/v and gate/up, oneDNN packing,
RMSNorm, RoPE, the attention function and the ``KVCache`` (of its KV heads only) are the
engine's own. ``TPDecoder.forward`` walks that model's layers and adds the collectives of the
Megatron layout: the vocabulary-parallel embedding and the row-parallel o and down projections
end in one all-reduce each (only rank 0 holds their biases, so the sum adds them once), the
column-parallel LM head in one all-gather, so every rank returns the full [N, V] fp32 logits.
Every rank must run the same forwards in the same order (``ranks.py`` sees to that).
Non-goals: sampling shard-wise, overlapping communication with compute, torch.compile.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from specdec.core.model_config import ModelConfig
from specdec.engine.batch import ForwardBatch
from specdec.engine.kv_cache import KVCache
from specdec.engine.model import DecoderLayer, DecoderModel
from specdec.engine.packed_linear import linear
from specdec.engine.rope import cos_sin
from specdec.engine.tp.sharding import RankShard


class TPDecoder(nn.Module):
    """``forward(batch, cache)`` like ``DecoderModel``'s, over ``shard.world`` ranks."""

    reads_features = False  # (a target: it takes no input features)

    def __init__(
        self,
        cfg: ModelConfig,
        local: DecoderModel,
        shard: RankShard,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.config = cfg  # the whole model's: the runner checks token ids against its vocab
        self.local = local
        self.shard = shard
        self.group = group  # the compute group; None: the default one

    @property
    def lm_head(self) -> nn.Linear:
        """This rank's LM head rows (the runner reads the device and dtype off it)."""
        return self.local.lm_head

    def new_cache(self, num_slots: int, max_seq_len: int | None = None) -> KVCache:
        """A cache of this rank's KV heads."""
        return self.local.new_cache(num_slots, max_seq_len)

    def forward(self, batch: ForwardBatch, cache: KVCache) -> torch.Tensor:
        """Run the chunks on every rank, write this rank's keys/values.  # → [N, V] fp32"""
        local = self.local
        x = self._embed(batch.input_ids)  # [T, C]
        cos, sin = cos_sin(batch.positions, local.inv_freq, x.dtype)  # [T, 1, D] each
        for module in local.model.layers:
            layer = cast(DecoderLayer, module)
            attn = layer.self_attn(layer.input_layernorm(x), batch, cache, cos, sin)  # partial
            x = x + self._all_reduce(attn)
            x = x + self._all_reduce(layer.mlp(layer.post_attention_layernorm(x)))
        x = local.model.norm(x[batch.logit_indices])  # [N, C]
        shard_logits = linear(x, local.lm_head_packed, local.lm_head.weight, None)  # [N, V/w]
        return self._gather_vocab(shard_logits.float())  # [N, V]

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary-parallel lookup: a rank embeds the ids in its rows, zeros elsewhere, and
        the all-reduce assembles the rows.  # input_ids [T] → [T, C]"""
        if self.shard.world == 1:
            return self.local.model.embed_tokens(input_ids)
        start = self.shard.vocab.start
        local_ids = input_ids - start  # [T]
        mine = (local_ids >= 0) & (local_ids < self.shard.vocab.size)  # [T] bool
        x = self.local.model.embed_tokens(torch.where(mine, local_ids, 0))  # [T, C]
        return self._all_reduce(x * mine[:, None].to(x.dtype))

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.shard.world > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def _gather_vocab(self, shard_logits: torch.Tensor) -> torch.Tensor:
        """Every rank's vocabulary columns side by side, padding dropped.  # [N, V/w] → [N, V]"""
        if self.shard.world > 1:
            parts = [torch.empty_like(shard_logits) for _ in range(self.shard.world)]
            dist.all_gather(parts, shard_logits.contiguous(), group=self.group)
            shard_logits = torch.cat(parts, dim=-1)  # [N, w·V/w]
        return shard_logits[:, : self.config.vocab_size]
