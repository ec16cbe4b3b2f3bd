"""oneDNN-packed linear layers: the same results as ``F.linear``, dropped when weights move."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.packed_linear import linear, pack
from specdec.engine.runner import ModelRunner

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 9])
def test_packed_linear_matches_f_linear(dtype, rows):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=gen).to(dtype)
    bias = torch.randn(96, generator=gen).to(dtype)
    x = torch.randn(rows, 64, generator=gen).to(dtype)
    packed = pack(weight)
    if packed is None:
        pytest.skip("oneDNN is not available here")
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert linear(x, packed, weight, bias).float().allclose(
        F.linear(x, weight, bias).float(), atol=tol, rtol=tol
    )
    assert linear(x, None, weight, bias).equal(F.linear(x, weight, bias))  # the fallback


def test_a_packed_model_steps_like_an_unpacked_one_and_moving_it_drops_the_packs(model_dir: Path):
    packed = load_model(model_dir / "target")
    plain = load_model(model_dir / "target").float()  # a conversion drops the packed copies
    assert packed.lm_head_packed is not None and plain.lm_head_packed is None
    logits = []
    for model in (packed, plain):
        runner = ModelRunner(model, num_slots=1)
        slot = runner.cache.allocate()
        logits.append(runner.step([Chunk(slot, [5, 6, 7, 8, 9], 0, 5)])[0])
    assert logits[0].allclose(logits[1], atol=1e-4)
