"""Shared fixtures: small real checkpoints written once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fixtures import fit_feature_draft, perturbed_copy, save_random_model

from specdec.core.tokenizer import Tokenizer
from specdec.engine.checkpoint import load_model, save_model
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate

# The test models are tiny: OpenMP threads only contend on a shared 2-core machine (an SDPA call
# runs ~100x slower with two busy threads than with one).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder holding a tiny target, and drafts that agree with it fully, mostly, or barely."""
    root = tmp_path_factory.mktemp("models")
    # A larger init range gives peaked, decisive distributions (like a trained model).
    save_random_model(root / "target", "llama", seed=0, initializer_range=0.15)
    perturbed_copy(root / "target", root / "draft_close", scale=0.03)
    save_random_model(
        root / "draft_other",
        "llama",
        seed=7,
        initializer_range=0.15,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
    )
    return root


FEATURE_PROMPTS = [[5, 17, 33, 2, 99, 100, 7], [1], list(range(3, 60))]


@pytest.fixture(scope="session")
def feature_draft_dir(model_dir: Path) -> Path:
    """A feature draft for ``model_dir``'s target, fitted to its greedy text (with the target's
    tokenizer, as a draft folder has)."""
    folder = model_dir / "feature_draft"
    draft = fit_feature_draft(load_model(model_dir / "target"), FEATURE_PROMPTS)
    save_model(draft, folder, dtype=torch.float32)
    shutil.copy(model_dir / "target" / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def reference(model_dir: Path):
    """Target-only output of ``model_dir``'s target for a text prompt, in process: what every
    pipeline test compares the services' output with."""
    runner = ModelRunner(load_model(model_dir / "target"), num_slots=1, max_seq_len=256)
    tokenizer = Tokenizer.from_folder(model_dir / "target")

    def ref(prompt: str, max_tokens: int, params: SamplingParams | None = None) -> list[int]:
        ids = tokenizer.encode(prompt)
        params = params or SamplingParams()
        return generate(runner, ids, params, max_tokens, None, 0).token_ids

    return ref
