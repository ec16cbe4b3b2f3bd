"""A Llama-family decoder in plain torch: Llama 2/3/3.x, Mistral, Qwen2/2.5, Qwen3.

Parameter names equal Hugging Face's (``model.layers.0.self_attn.q_proj.weight`` ...), so a
checkpoint loads as a plain state dict. The forward takes a ``ForwardBatch`` of many sequences at
their own positions and a ``KVCache``; linear layers see the flat [T, C] tokens (no padding),
attention scatters queries into a padded [B, L] layout and reads each slot's cached keys.
``forward_dense`` runs whole sequences without a cache, for the demo pair's training script.
``load_model`` calls ``fuse_projections``: q/k/v and gate/up each become one matmul, the
per-projection parameters views into the stacked weight (same names, no second copy); on a CPU
it then calls ``pack_linears``, which keeps a oneDNN-packed copy of every projection and of the
LM head for the cache forward (``packed_linear.py``: a few rows then cost little more than one).
Non-goals: training features (dropout, gradient checkpointing), tensor parallelism, quantization.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from specdec.core.model_config import ModelConfig
from specdec.engine.batch import ForwardBatch
from specdec.engine.kv_cache import KVCache
from specdec.engine.packed_linear import calibrate, linear, pack
from specdec.engine.rope import apply_rope, cos_sin, inv_frequencies


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 and cast back (as transformers does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., C]
        if x.dtype == torch.float32:  # one call; bit for bit the same as the two-step form
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, gqa: bool
) -> torch.Tensor:
    """Scaled dot-product attention.  # q [B, Hq, L, D], k, v [B, Hkv, S, D] → [B, Hq, L, D]

    One query per sequence (a decode step) in bf16 or fp16 on a CPU runs in fp32: there the
    fused kernel's half-precision path is several times slower than its fp32 one (demo target,
    100 keys: 76 µs against 25 µs with the casts; 500 keys: 455 against 78 µs), and fp32 is
    at least as accurate (it is what that kernel accumulates in).
    """
    if q.shape[2] == 1 and q.dtype != torch.float32 and q.device.type == "cpu":
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=gqa
        )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def stack_linears(*layers: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for linears that share an input, so one matmul computes them all.

    Each layer's parameters are re-pointed at its rows of the stacked tensors: the model keeps its
    Hugging Face parameter names and no weight is held twice. The layers all have a bias or none
    do (one config flag decides).  # → [sum(out_i), C], [sum(out_i)] or None
    """
    weight = torch.cat([layer.weight.detach() for layer in layers])
    biases = [layer.bias.detach() for layer in layers if layer.bias is not None]
    bias = torch.cat(biases) if biases else None
    row = 0
    for layer in layers:
        rows = slice(row, row + layer.out_features)
        layer.weight = nn.Parameter(weight[rows], requires_grad=False)
        if bias is not None:
            layer.bias = nn.Parameter(bias[rows], requires_grad=False)
        row += layer.out_features
    return weight, bias


class Attention(nn.Module):
    """Grouped-query attention over the KV cache, with optional q/k bias and q/k norm."""

    qkv_weight: torch.Tensor | None  # [(Hq+2Hkv)·D, C] once ``fuse()`` ran, else None
    qkv_bias: torch.Tensor | None

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = d = cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=cfg.attention_out_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.proj_sizes = (self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d)
        self.register_buffer("qkv_weight", None, persistent=False)
        self.register_buffer("qkv_bias", None, persistent=False)
        self.qkv_packed: torch.Tensor | None = None  # oneDNN copies (``pack``), not state
        self.o_packed: torch.Tensor | None = None

    def fuse(self) -> None:
        """One [(Hq+2Hkv)·D, C] matmul for q, k and v (inference; weights become views)."""
        weight, bias = stack_linears(self.q_proj, self.k_proj, self.v_proj)
        self.qkv_weight, self.qkv_bias = weight, bias

    def pack(self) -> None:
        """oneDNN-packed copies of the fused q/k/v and the output projection (after ``fuse``)."""
        assert self.qkv_weight is not None
        self.qkv_packed = pack(self.qkv_weight)
        self.o_packed = pack(self.o_proj.weight)

    def _qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project, normalise (Qwen3) and rotate.  # x [..., T, C] → q [..., T, Hq, D], k, v"""
        lead = x.shape[:-1]
        if self.qkv_weight is not None:
            qkv = linear(
                x, self.qkv_packed, self.qkv_weight, self.qkv_bias
            )  # [..., T, (Hq+2Hkv)·D]
            if not self.qk_norm:  # rotate q and k in one pass: half the small ops per layer
                heads = qkv.view(*lead, -1, self.head_dim)  # [..., T, Hq+2Hkv, D]
                qk = apply_rope(heads[..., : self.num_heads + self.num_kv_heads, :], cos, sin)
                hq = self.num_heads
                return qk[..., :hq, :], qk[..., hq:, :], heads[..., hq + self.num_kv_heads :, :]
            q, k, v = qkv.split(self.proj_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(*lead, self.num_heads, self.head_dim)
        k = k.view(*lead, self.num_kv_heads, self.head_dim)
        v = v.view(*lead, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self,
        x: torch.Tensor,
        batch: ForwardBatch,
        cache: KVCache,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:  # x [T, C]
        t = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)  # [T, Hq, D], [T, Hkv, D], [T, Hkv, D]
        cache.write(self.layer, batch.token_slots, batch.positions, k, v)

        keys, values = cache.read(
            self.layer, batch.slot_ids, batch.context_len, batch.single_slot
        )  # [B, S, Hkv, D] each
        if batch.single_slot is not None:  # one sequence: no padding needed
            q_pad = q[None]  # [1, L, Hq, D]
        else:
            q_pad = q.new_zeros(keys.shape[0], batch.max_query_len, self.num_heads, self.head_dim)
            q_pad[batch.token_rows, batch.token_cols] = q  # [B, L, Hq, D]
        out = attention(
            q_pad.transpose(1, 2),  # [B, Hq, L, D]
            keys.transpose(1, 2),  # [B, Hkv, S, D]
            values.transpose(1, 2),
            batch.attn_mask,  # [B, 1, L, S] or None
            self.num_heads != self.num_kv_heads,
        ).transpose(1, 2)  # [B, L, Hq, D]
        out = out[0] if batch.single_slot is not None else out[batch.token_rows, batch.token_cols]
        out = out.reshape(t, self.num_heads * self.head_dim)  # [T, Hq·D]
        return linear(out, self.o_packed, self.o_proj.weight, self.o_proj.bias)  # [T, C]

    def forward_dense(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:  # x [B, T, C], no cache: training and scoring
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)  # [B, T, Hq, D], [B, T, Hkv, D], [B, T, Hkv, D]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            enable_gqa=self.num_heads != self.num_kv_heads,
        ).transpose(1, 2)  # [B, T, Hq, D]
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    gate_up_weight: torch.Tensor | None  # [2I, C] once ``fuse()`` ran, else None
    gate_up_bias: torch.Tensor | None

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=cfg.mlp_bias)
        self.register_buffer("gate_up_weight", None, persistent=False)
        self.register_buffer("gate_up_bias", None, persistent=False)
        self.gate_up_packed: torch.Tensor | None = None  # oneDNN copies (``pack``), not state
        self.down_packed: torch.Tensor | None = None

    def fuse(self) -> None:
        """One [2I, C] matmul for gate and up (inference; weights become views)."""
        weight, bias = stack_linears(self.gate_proj, self.up_proj)
        self.gate_up_weight, self.gate_up_bias = weight, bias

    def pack(self) -> None:
        """oneDNN-packed copies of the fused gate/up and the down projection (after ``fuse``)."""
        assert self.gate_up_weight is not None
        self.gate_up_packed = pack(self.gate_up_weight)
        self.down_packed = pack(self.down_proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [..., C]
        if self.gate_up_weight is not None:
            gate_up = linear(x, self.gate_up_packed, self.gate_up_weight, self.gate_up_bias)
            gate, up = gate_up.chunk(2, dim=-1)  # [..., I] each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        down = self.down_proj
        return linear(F.silu(gate) * up, self.down_packed, down.weight, down.bias)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        batch: ForwardBatch,
        cache: KVCache,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:  # x [T, C]
        x = x + self.self_attn(self.input_layernorm(x), batch, cache, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_dense(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:  # x [B, T, C]
        x = x + self.self_attn.forward_dense(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Embeddings, decoder layers and the final norm (``model.`` in HF parameter names)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DecoderModel(nn.Module):
    """The whole causal LM: ``forward(batch, cache)`` returns logits of the requested tokens."""

    reads_features = False  # a feature draft's forward also takes each token's input feature

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.head_vocab_size or cfg.vocab_size, bias=False)
        if cfg.head_vocab_size is not None:  # the token id of each head row (FR-Spec drafts)
            ids = torch.zeros(cfg.head_vocab_size, dtype=torch.int64)  # [Vh], from the checkpoint
            self.lm_head.register_buffer("token_ids", ids)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv_freq = inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [D/2] fp32
        self.lm_head_packed: torch.Tensor | None = None

    def fuse_projections(self) -> DecoderModel:
        """Stack q/k/v and gate/up weights for inference: fewer, larger matmuls per layer."""
        for layer in self.model.layers:
            cast(DecoderLayer, layer).self_attn.fuse()
            cast(DecoderLayer, layer).mlp.fuse()
        return self

    def pack_linears(self) -> DecoderModel:
        """oneDNN-packed copies of every projection and the LM head, for inference on a CPU
        (after ``fuse_projections``; where oneDNN cannot, they stay None: plain matmuls), and
        which path one row takes through each shape, timed on this CPU (``calibrate``)."""
        pairs = []
        for layer in self.model.layers:
            attn, mlp = cast(DecoderLayer, layer).self_attn, cast(DecoderLayer, layer).mlp
            attn.pack()
            mlp.pack()
            pairs += [
                (attn.qkv_weight, attn.qkv_packed),
                (attn.o_proj.weight, attn.o_packed),
                (mlp.gate_up_weight, mlp.gate_up_packed),
                (mlp.down_proj.weight, mlp.down_packed),
            ]
        self.lm_head_packed = pack(self.lm_head.weight)
        calibrate([*pairs, (self.lm_head.weight, self.lm_head_packed)])
        return self

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """``to``, ``float``, ``cuda``... move the parameters; packed copies of the old ones
        would be stale, so they go (``pack_linears`` again to have them back)."""
        for module in self.modules():
            for name in ("qkv_packed", "o_packed", "gate_up_packed", "down_packed"):
                if getattr(module, name, None) is not None:
                    setattr(module, name, None)
        self.lm_head_packed = None
        return super()._apply(fn, recurse)

    def new_cache(self, num_slots: int, max_seq_len: int | None = None) -> KVCache:
        """A cache shaped for this model, on its device and in its dtype."""
        cfg = self.config
        weight = self.lm_head.weight
        return KVCache(
            cfg.num_hidden_layers,
            num_slots,
            max_seq_len or cfg.max_position_embeddings,
            cfg.num_key_value_heads,
            cfg.head_dim,
            dtype=weight.dtype,
            device=weight.device,
        )

    def forward(
        self, batch: ForwardBatch, cache: KVCache, hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the chunks, write their keys/values, return fp32 logits; with ``hidden``, also
        every token's final hidden state after the norm (what a feature draft reads).
        # → [N, V] (, [T, C])"""
        x = self.inputs(batch.input_ids, batch.features)  # [T, C]
        cos, sin = cos_sin(batch.positions, self.inv_freq, x.dtype)  # [T, 1, D] each
        for layer in self.model.layers:
            x = layer(x, batch, cache, cos, sin)
        if hidden:
            x = self.model.norm(x)  # [T, C]
            rows = x[batch.logit_indices]  # [N, C]
        else:
            rows = self.model.norm(x[batch.logit_indices])  # [N, C]
        logits = linear(rows, self.lm_head_packed, self.lm_head.weight, None).float()  # [N, Vh]
        return (self.full_vocab(logits), x) if hidden else self.full_vocab(logits)  # [N, V]

    def inputs(self, input_ids: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """What the first layer reads: the tokens' embeddings (a feature draft also reads
        ``features``).  # [..., T] → [..., T, C]"""
        return self.model.embed_tokens(input_ids)

    @property
    def head_token_ids(self) -> torch.Tensor | None:
        """[Vh] int64: the token of each LM head row, when the head covers a subset; else None."""
        ids = getattr(self.lm_head, "token_ids", None)
        return ids if isinstance(ids, torch.Tensor) else None

    def full_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Head logits over the whole vocabulary.  # [..., Vh] → [..., V]

        A reduced head's rows go to their token ids and every other token gets -inf: the
        draft's distribution is exactly zero outside its subset, which the verifier's
        acceptance test handles like any other draft distribution (the output stays exact).
        """
        ids = self.head_token_ids
        if ids is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.config.vocab_size), -math.inf)
        return full.index_copy_(-1, ids, logits)

    def forward_dense(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Whole sequences from position 0, causal, no cache (training, scoring).

        input_ids [B, T] int64 → logits [B, T, V] in the model's dtype (-inf outside a
        reduced head's tokens).
        """
        return self.full_vocab(self.lm_head(self.hidden_dense(input_ids)))

    def hidden_dense(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``forward_dense`` up to the final norm, before the LM head.  # [B, T] → [B, T, C]"""
        return self.dense(self.inputs(input_ids, None))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The layers and the final norm over whole sequences from position 0, causal, no
        cache.  # x [B, T, C] → [B, T, C]"""
        positions = torch.arange(x.shape[1], device=x.device)
        cos, sin = cos_sin(positions, self.inv_freq, x.dtype)  # [T, 1, D] each
        for layer in self.model.layers:
            x = cast(DecoderLayer, layer).forward_dense(x, cos, sin)
        return self.model.norm(x)
