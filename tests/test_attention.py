"""The step forward's attention and norm: same results as the plain formulas they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from specdec.engine.model import RMSNorm, attention

pytestmark = pytest.mark.unit


def _qkv(dtype: torch.dtype, queries: int, keys: int):  # → [1, 8, L, 64], 2 x [1, 4, S, 64]
    gen = torch.Generator().manual_seed(queries * 1000 + keys)
    q = torch.randn(1, 8, queries, 64, generator=gen)
    k = torch.randn(1, 4, keys, 64, generator=gen)
    v = torch.randn(1, 4, keys, 64, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("keys", [1, 37, 300])
def test_one_query_in_bf16_attends_like_fp32(keys):
    q, k, v = _qkv(torch.bfloat16, 1, keys)
    out = attention(q, k, v, None, gqa=True)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 8, 1, 64)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    assert out.float().allclose(reference, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_several_queries_with_a_mask_are_plain_sdpa(dtype):
    q, k, v = _qkv(dtype, 5, 40)
    mask = (torch.arange(40)[None, :] <= (35 + torch.arange(5))[:, None])[None, None]  # causal
    out = attention(q, k, v, mask, gqa=True)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert out.equal(expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_the_two_step_formula(dtype):
    norm = RMSNorm(96, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 96))
    norm = norm.to(dtype)
    x = torch.randn(7, 96).to(dtype)
    x32 = x.float()
    expected = norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    assert norm(x).equal(expected)
