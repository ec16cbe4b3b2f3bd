"""oneDNN-packed linear layers: the same results as ``F.linear``, dropped when weights move."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specdec.engine import packed_linear
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.packed_linear import calibrate, linear, pack
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


def test_calibrate_picks_a_path_per_shape_and_either_gives_the_same_product():
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(2048, 128, generator=gen) for _ in range(3)]
    pairs = [(w, pack(w)) for w in weights]
    if pairs[0][1] is None:
        pytest.skip("oneDNN is not available here")
    packed_linear._ONE_ROW_PACKED.pop(((2048, 128), torch.float32), None)
    calibrate([*pairs, (torch.randn(16, 16), None)])  # an unpacked weight is skipped
    assert set(packed_linear._ONE_ROW_PACKED) >= {((2048, 128), torch.float32)}
    assert ((16, 16), torch.float32) not in packed_linear._ONE_ROW_PACKED
    x = torch.randn(1, 128, generator=gen)
    expected = F.linear(x, weights[0])
    for choice in (True, False):
        packed_linear._ONE_ROW_PACKED[((2048, 128), torch.float32)] = choice
        assert linear(x, pairs[0][1], weights[0], None).allclose(expected, atol=1e-4)
