"""``engine/draft_dtype.py``: a CPU draft loads in the dtype that steps faster here."""

from __future__ import annotations

import pytest
import torch

from specdec.engine import draft_dtype
from specdec.engine.checkpoint import load_model
from tests.fixtures import save_random_model

pytestmark = pytest.mark.unit


def test_fastest_picks_the_model_with_the_shorter_step(tmp_path, monkeypatch):
    folder = save_random_model(tmp_path / "draft")
    fast, slow = load_model(folder), load_model(folder)
    real = draft_dtype._step

    def timed(runner, slots, base):  # the slow model's steps take 1 s longer
        return real(runner, slots, base) + (1.0 if runner.model is slow else 0.0)

    monkeypatch.setattr(draft_dtype, "_step", timed)
    assert draft_dtype.fastest([slow, fast]) == 1
    assert draft_dtype.fastest([fast, slow]) == 0


def test_load_draft_on_cpu_returns_one_of_the_candidates_ready_to_serve(tmp_path):
    folder = save_random_model(tmp_path / "draft")
    model = draft_dtype.load_draft(folder, "cpu")
    assert model.lm_head.weight.dtype in draft_dtype.CPU_CANDIDATES
    assert not model.training
    reference = load_model(folder, model.lm_head.weight.dtype)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model.forward_dense(ids), reference.forward_dense(ids))
