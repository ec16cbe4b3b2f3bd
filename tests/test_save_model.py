"""Writing checkpoints (the demo pair's export) and the cache-free dense forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures import micro_config

from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model, save_model
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner

pytestmark = pytest.mark.unit

CFG = micro_config(
    vocab_size=96, max_position_embeddings=64, tie_word_embeddings=True, eos_token_ids=(1,)
)


@pytest.fixture(scope="module")
def model() -> DecoderModel:
    torch.manual_seed(0)
    m = DecoderModel(CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


def test_dense_forward_equals_cached_forward(model):
    ids = torch.randint(0, CFG.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model.forward_dense(ids)  # [2, 20, V]
    runner = ModelRunner(model, num_slots=2)
    for row in range(2):
        slot = runner.cache.allocate()
        cached = runner.step([Chunk(slot, ids[row].tolist(), 0, 20)])[0]
        torch.testing.assert_close(cached, dense[row], atol=1e-5, rtol=0)


def test_saved_model_loads_in_engine_and_transformers(model, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    folder = save_model(model, tmp_path / "m", dtype=torch.float32)
    again = load_model(folder)
    assert again.config == CFG
    ids = torch.arange(10)[None] % CFG.vocab_size
    with torch.no_grad():
        ours = model.forward_dense(ids)[0]
        torch.testing.assert_close(again.forward_dense(ids)[0], ours, atol=0, rtol=0)
        hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        torch.testing.assert_close(hf(ids).logits[0], ours, atol=1e-4, rtol=0)


def test_bf16_export_halves_the_file(model, tmp_path: Path):
    full = save_model(model, tmp_path / "fp32", dtype=torch.float32) / "model.safetensors"
    half = save_model(model, tmp_path / "bf16") / "model.safetensors"
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert load_model(half.parent).lm_head.weight.dtype == torch.float32  # caller's dtype


def test_fused_projections_change_no_logit_and_no_name(model, tmp_path: Path):
    ids = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    folder = save_model(model, tmp_path / "m", dtype=torch.float32)
    loaded = load_model(folder)  # inference models come back fused
    attn = loaded.model.layers[0].self_attn
    assert (
        attn.qkv_weight is not None and attn.q_proj.weight.data_ptr() == attn.qkv_weight.data_ptr()
    )
    assert loaded.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.forward_dense(ids), model.forward_dense(ids), atol=1e-6, rtol=0
        )
    again = load_model(save_model(loaded, tmp_path / "again", dtype=torch.float32))
    for name, tensor in again.state_dict().items():
        torch.testing.assert_close(tensor, model.state_dict()[name], atol=0, rtol=0)
