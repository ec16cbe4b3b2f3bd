"""A draft with an LM head over a subset of the vocabulary (FR-Spec): exact logits on its
subset, -inf elsewhere, and speculative output still equal to target-only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from specdec.core.errors import CheckpointError
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model, save_model
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate
from specdec.models.reduced_head import frequent_tokens, write_reduced_head
from tests.fixtures import save_random_model

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    root = tmp_path_factory.mktemp("reduced")
    full = save_random_model(root / "full", tie_word_embeddings=True)
    ids = np.arange(3, 320, 2)  # every other token, 0 (eos) not among them
    return full, write_reduced_head(full, root / "reduced", ids), ids


def _logits(folder: Path, tokens: list[int]) -> torch.Tensor:
    runner = ModelRunner(load_model(folder), num_slots=1)
    slot = runner.cache.allocate()
    return runner.step([Chunk(slot, tokens, 0, len(tokens))])[0]  # [T, V]


def test_subset_logits_equal_the_full_heads_and_the_rest_is_minus_inf(pair):
    full, reduced, ids = pair
    tokens = [5, 17, 3, 250, 9]
    whole, cut = _logits(full, tokens), _logits(reduced, tokens)
    assert cut.shape == whole.shape
    index = torch.from_numpy(ids)
    assert cut[:, index].allclose(whole[:, index], atol=1e-5)
    outside = torch.ones(whole.shape[1], dtype=torch.bool)
    outside[index] = False
    assert torch.isneginf(cut[:, outside]).all()


def test_speculating_with_a_reduced_head_draft_gives_target_only_output(pair):
    full, reduced, _ = pair
    target = ModelRunner(load_model(full), num_slots=2)
    draft = ModelRunner(load_model(reduced), num_slots=2)
    prompt = [7, 8, 9, 10]
    alone = generate(target, prompt, SamplingParams(), 40, stop_token_ids=[])
    spec = generate(
        target, prompt, SamplingParams(), 40, DraftModelProposer(draft), 4, stop_token_ids=[]
    )
    assert spec.token_ids == alone.token_ids
    assert spec.stats.draft_tokens > 0


def test_save_model_keeps_the_head_ids_as_integers(pair, tmp_path):
    _, reduced, ids = pair
    copy = save_model(load_model(reduced), tmp_path / "copy", torch.bfloat16)
    assert json.loads((copy / "config.json").read_text())["specdec_head_vocab_size"] == len(ids)
    assert load_model(copy).head_token_ids.tolist() == ids.tolist()


@pytest.mark.parametrize(
    "ids, message", [([1, 1, 2], "repeats"), ([1, 400], "outside"), ([-1, 2], "outside")]
)
def test_bad_head_ids_are_refused_when_loading(pair, tmp_path, ids, message):
    _, reduced, _ = pair
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for path in reduced.iterdir():
        (bad / path.name).write_bytes(path.read_bytes())
    state = load_file(str(bad / "model.safetensors"))
    state["lm_head.token_ids"] = torch.tensor(ids, dtype=torch.int64)
    state["lm_head.weight"] = state["lm_head.weight"][: len(ids)].clone()
    save_file(state, str(bad / "model.safetensors"))
    config = json.loads((bad / "config.json").read_text())
    config["specdec_head_vocab_size"] = len(ids)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(bad)


def test_a_tied_config_with_a_reduced_head_is_refused(pair, tmp_path):
    _, reduced, _ = pair
    config = json.loads((reduced / "config.json").read_text())
    config["tie_word_embeddings"] = True
    from specdec.core.model_config import ModelConfig

    with pytest.raises(CheckpointError, match="untied"):
        ModelConfig.from_hf_dict(config)


def test_frequent_tokens_ranks_by_count_then_id():
    corpus = [[5, 5, 5, 2, 2, 9], [2, 7]]
    assert frequent_tokens(corpus, 10, 2).tolist() == [2, 5]
    assert frequent_tokens(corpus, 10, 5).tolist() == [0, 2, 5, 7, 9]  # 0: first unseen id
