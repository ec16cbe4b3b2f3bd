"""``tools/train_demo.py``: the teacher-written rows the draft is distilled on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from specdec.engine.config import ModelConfig
from specdec.engine.model import DecoderModel
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from train_demo import SEQ_LEN, teacher_continuations

pytestmark = pytest.mark.unit

CFG = ModelConfig(
    model_type="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=512,
    eos_token_ids=(0,),
)


def test_rows_are_training_text_then_the_teachers_own_continuation() -> None:
    torch.manual_seed(0)
    teacher = DecoderModel(CFG).eval().requires_grad_(False)
    data = torch.randint(1, CFG.vocab_size, (5000,), generator=torch.Generator().manual_seed(1))
    data[::300] = 0  # files end with EOS
    rows = teacher_continuations(teacher, data, n=8, batch=4, seed=0)
    assert rows.shape == (8, SEQ_LEN + 1) and rows.dtype == torch.int16
    runner = ModelRunner(teacher, num_slots=1, max_seq_len=SEQ_LEN + 1)
    for greedy_window_row in (2, 6):  # rows 4j+2: a 128-token window, continued greedily
        ids = rows[greedy_window_row].tolist()
        prompt = ids[: SEQ_LEN // 2]
        assert any(data[s : s + len(prompt)].tolist() == prompt for s in range(len(data)))
        again = generate(runner, prompt, SamplingParams(), len(ids) - len(prompt), None, 0)
        assert again.token_ids == ids[len(prompt) :]
