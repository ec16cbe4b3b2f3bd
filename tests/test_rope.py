"""``engine/rope.py``: the sign-folded rotation equals the rotate_half form bit for bit."""

from __future__ import annotations

import pytest
import torch

from specdec.engine.rope import apply_rope, cos_sin, inv_frequencies

pytestmark = pytest.mark.unit


def rotate_half_reference(x, positions, inv_freq, dtype):  # as transformers' Llama writes it
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_apply_rope_equals_rotate_half_bit_for_bit(dtype):
    torch.manual_seed(0)
    inv_freq = inv_frequencies(64, 10000.0, None)
    positions = torch.tensor([0, 1, 7, 130, 4095])
    x = torch.randn(2, 5, 3, 64).to(dtype)  # [B, T, H, D]
    cos, sin = cos_sin(positions, inv_freq, dtype)
    assert cos.shape == sin.shape == (5, 1, 64)
    got = apply_rope(x, cos, sin)
    assert torch.equal(got, rotate_half_reference(x, positions, inv_freq, dtype))


def test_position_zero_is_the_identity():
    x = torch.randn(1, 2, 8)
    cos, sin = cos_sin(torch.tensor([0]), inv_frequencies(8, 10000.0, None), torch.float32)
    assert torch.equal(apply_rope(x, cos, sin), x)
