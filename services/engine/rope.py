"""Rotary position embeddings (RoPE), with the scalings Llama-family checkpoints use.

Computed as Hugging Face ``transformers`` does (half-split ``rotate_half`` layout, frequencies in
fp32), so logits match it. Supports plain RoPE, ``linear`` and ``llama3`` scaling.
Non-goals: YaRN, dynamic NTK, interleaved (GPT-J) layout.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def inv_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies of the rotary pairs, after scaling.  # [head_dim // 2] fp32"""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)  # [D/2]
    if scaling is None:
        return inv_freq
    rope_type = scaling["rope_type"]
    factor = float(scaling["factor"])
    if rope_type == "linear":
        return inv_freq / factor
    if rope_type == "llama3":
        return _llama3_scale(inv_freq, factor, scaling)
    raise ValueError(f"unsupported rope_type {rope_type!r}")


def _llama3_scale(inv_freq: torch.Tensor, factor: float, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths slowed by ``factor``, short ones kept, a smooth band between."""
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    wavelen = 2 * math.pi / inv_freq  # [D/2]
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin tables for absolute ``positions``, shaped to broadcast over heads.

    The sin table's first half is negated, which folds rotate_half's sign into it (see
    ``apply_rope``).  # positions [T] int64 → 2 x [T, 1, D] dtype
    """
    freqs = positions.float()[:, None] * inv_freq[None, :]  # [T, D/2] fp32
    cos, sin = freqs.cos(), freqs.sin()
    cos = torch.cat((cos, cos), dim=-1)  # [T, D]
    signed_sin = torch.cat((-sin, sin), dim=-1)  # [T, D]
    return cos[:, None, :].to(dtype), signed_sin[:, None, :].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate each head of ``x`` by its token's angle.  # x [..., T, H, D], tables [T, 1, D]

    Equal bit for bit to transformers' ``x * cos + rotate_half(x) * sin``: rotate_half(x) is
    [-x2, x1], and [x2, x1] * [-sin, sin] rounds the same, in fewer small ops per call.
    """
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
