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
from tests.fixtures import save_random_model

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 9])
def test_packed_linear_matches_f_linear(dtype, rows):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1024, 64, generator=gen).to(dtype)  # large enough to be packed
    bias = torch.randn(1024, generator=gen).to(dtype)
    x = torch.randn(rows, 64, generator=gen).to(dtype)
    packed = pack(weight)
    if packed is None:
        pytest.skip("oneDNN is not available here")
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert (
        linear(x, packed, weight, bias)
        .float()
        .allclose(F.linear(x, weight, bias).float(), atol=tol, rtol=tol)
    )
    assert linear(x, None, weight, bias).equal(F.linear(x, weight, bias))  # the fallback
    assert pack(weight[:8]) is None  # small weights stay plain


def test_a_packed_model_steps_like_an_unpacked_one_and_moving_it_drops_the_packs(tmp_path: Path):
    folder = save_random_model(tmp_path / "wide", hidden_size=256, intermediate_size=512)
    packed = load_model(folder)
    plain = load_model(folder).float()  # a conversion drops the packed copies
    assert packed.lm_head_packed is not None and plain.lm_head_packed is None
    logits = []
    for model in (packed, plain):
        runner = ModelRunner(model, num_slots=1)
        slot = runner.cache.allocate()
        logits.append(runner.step([Chunk(slot, [5, 6, 7, 8, 9], 0, 5)])[0])
    assert logits[0].allclose(logits[1], atol=1e-4)
