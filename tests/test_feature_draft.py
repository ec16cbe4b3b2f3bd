"""Feature drafts (EAGLE): the model's cached forward against its dense one, its checkpoint, the
target's hidden states, and speculative generation with it: exact under greedy, faithful under
sampling, its slot rolled back to what the target's features built."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from exact import assert_matches, exact_marginals
from fixtures import micro_config

from specdec.core.errors import InvalidRequest
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model, save_model
from specdec.engine.feature_draft import FeatureDraft, shifted
from specdec.engine.model import DecoderModel
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.proposer_feature import FeatureDraftProposer, model_proposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from distill_feature_draft import feature_draft_from

pytestmark = pytest.mark.unit

GREEDY = SamplingParams()
PROMPTS = [[5, 17, 33, 2, 99, 100, 7], [1], list(range(3, 60))]


def _micro_draft() -> FeatureDraft:
    torch.manual_seed(0)
    cfg = micro_config(num_hidden_layers=1, feature_draft=True)
    return FeatureDraft(cfg).eval().requires_grad_(False)


def test_shifted_puts_the_previous_feature_at_each_position() -> None:
    f = torch.arange(12.0).view(1, 4, 3)  # [B, T, C]
    out = shifted(f)
    assert torch.equal(out[0, 0], torch.zeros(3))
    assert torch.equal(out[0, 1:], f[0, :-1])


def test_cached_forward_matches_the_dense_one() -> None:
    draft = _micro_draft()
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(1))
    feats = torch.randn(1, 9, 32, generator=torch.Generator().manual_seed(2))
    dense = draft.features_dense(ids, feats)[0]  # [T, C]
    runner = ModelRunner(draft, num_slots=1, max_seq_len=32)
    slot = runner.cache.allocate()
    chunk = Chunk(slot, ids[0, :6].tolist(), 0, 6, features=feats[0, :6])
    logits, hidden = runner.step_hidden([chunk])  # a prefill chunk, then decode steps
    outs = [hidden[0]]
    for j in range(6, 9):
        step = Chunk(slot, [int(ids[0, j])], j, 1, features=feats[0, j : j + 1])
        _, hidden_j = runner.step_hidden([step])
        outs.append(hidden_j[0])
    torch.testing.assert_close(torch.cat(outs), dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[0], draft.lm_head(dense[:6]).float(), atol=1e-4, rtol=1e-4)
    with pytest.raises(InvalidRequest, match="features"):
        runner.step([Chunk(slot, [1], 9, 1)])
    with pytest.raises(InvalidRequest, match=r"features \[1, 32\]"):
        runner.step([Chunk(slot, [1], 9, 1, features=torch.zeros(2, 32))])


def test_a_token_draft_turned_feature_draft_starts_out_as_it() -> None:
    torch.manual_seed(0)
    token_draft = DecoderModel(micro_config()).eval().requires_grad_(False)
    draft = feature_draft_from(token_draft)
    assert draft.config.feature_draft and not draft.model.embed_tokens.weight.requires_grad
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))
    feats = torch.randn(2, 9, 32)  # ignored until training teaches fc to read them
    expected = token_draft.lm_head(token_draft.hidden_dense(ids))
    torch.testing.assert_close(draft.lm_head(draft.features_dense(ids, feats)), expected)


def test_checkpoint_round_trip_keeps_the_kind_and_the_outputs(tmp_path: Path) -> None:
    draft = _micro_draft()
    save_model(draft, tmp_path / "d", dtype=torch.float32)
    loaded = load_model(tmp_path / "d")
    assert isinstance(loaded, FeatureDraft) and loaded.config.feature_draft
    assert "model.fc.weight" in loaded.state_dict()
    ids = torch.tensor([[3, 4, 5]])
    feats = torch.randn(1, 3, 32)
    torch.testing.assert_close(loaded.features_dense(ids, feats), draft.features_dense(ids, feats))


def test_target_hidden_states_are_the_dense_ones_after_the_norm() -> None:
    torch.manual_seed(0)
    target = DecoderModel(micro_config()).eval().requires_grad_(False)
    ids = [4, 9, 1, 33, 7]
    runner = ModelRunner(target, num_slots=1, max_seq_len=32)
    slot = runner.cache.allocate()
    logits, hidden = runner.step_hidden([Chunk(slot, ids[:3], 0, 1), Chunk(slot, [], 0, 0)][:1])
    _, more = runner.step_hidden([Chunk(slot, ids[3:], 3, 2)])
    dense = target.hidden_dense(torch.tensor([ids]))[0]
    torch.testing.assert_close(torch.cat([hidden[0], more[0]]), dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[0], target.forward_dense(torch.tensor([ids[:3]]))[0, -1:])


@pytest.fixture(scope="module")
def target(model_dir: Path) -> ModelRunner:
    return ModelRunner(load_model(model_dir / "target"), num_slots=4)


@pytest.fixture(scope="module")
def draft(feature_draft_dir: Path) -> ModelRunner:
    return ModelRunner(load_model(feature_draft_dir), num_slots=4)


def plain(target: ModelRunner, prompt: list[int], n: int) -> list[int]:
    return generate(target, prompt, GREEDY, n, None, 0, stop_token_ids=[]).token_ids


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_with_a_feature_draft_equals_target_only(target, draft, prompt, k) -> None:
    expected = plain(target, prompt, 48)
    proposer = FeatureDraftProposer(draft)
    got = generate(target, prompt, GREEDY, 48, proposer, k, stop_token_ids=[])
    assert got.token_ids == expected
    assert got.stats.accepted_tokens > 0


def test_unseen_prompt_rejects_and_still_matches(target, draft) -> None:
    prompt = [200, 3, 150, 77, 12, 9]
    got = generate(target, prompt, GREEDY, 40, FeatureDraftProposer(draft), 4, stop_token_ids=[])
    assert got.token_ids == plain(target, prompt, 40)
    assert got.stats.accepted_tokens < got.stats.draft_tokens  # rejections happened too


def test_slot_keeps_only_entries_built_on_the_targets_features(target, draft) -> None:
    proposer = FeatureDraftProposer(draft)
    committed = list(PROMPTS[0])
    proposal = proposer.propose(committed, 4, GREEDY, 0)
    # Nothing from the target yet: every entry read zeros or its own features.
    assert proposer.cached == committed + proposal.draft_token_ids[:-1]
    assert proposer.exact == 1
    committed.append(proposal.draft_token_ids[0])  # the target's verdict: one token
    proposer.take_features(torch.ones(len(committed) - 1, 64), len(committed) - 1)
    assert proposer.exact == 1  # position 1 on read the feature just written
    proposer.propose(committed, 2, GREEDY, 0)
    assert proposer.exact == len(committed)  # fed again, on the target's features this time
    proposer.close()
    assert draft.cache.slots_free == draft.cache.num_slots


def test_model_proposer_picks_by_the_kind_of_draft(target, draft) -> None:
    feature, plain_proposer = model_proposer(draft), model_proposer(target)
    assert isinstance(feature, FeatureDraftProposer)
    assert isinstance(plain_proposer, DraftModelProposer)
    feature.close()
    plain_proposer.close()
    with pytest.raises(TypeError):
        FeatureDraftProposer(target)


def test_draft_ahead_refuses_a_feature_draft(target, draft) -> None:
    with pytest.raises(InvalidRequest, match="ahead_width"):
        generate(target, [1, 2], GREEDY, 4, FeatureDraftProposer(draft), 2, ahead_width=2)
    assert draft.cache.slots_free == draft.cache.num_slots


@pytest.mark.slow
def test_sampling_with_a_feature_draft_keeps_the_target_distribution(target, draft) -> None:
    """Chi-square of the first three tokens against the exact target marginals."""
    params = SamplingParams(temperature=1.5, top_k=6)
    prompt = PROMPTS[0]
    marginals = exact_marginals(target, prompt, params, 3)
    n = 1500
    counts: list[Counter[int]] = [Counter(), Counter(), Counter()]
    accepted = 0
    for seed in range(n):
        p = SamplingParams(temperature=1.5, top_k=6, seed=seed)
        proposer = FeatureDraftProposer(draft, top_m=4, top_mass=0.8)
        got = generate(target, prompt, p, 3, proposer, 1, stop_token_ids=[])
        accepted += got.stats.accepted_tokens
        for i in range(3):
            counts[i][got.token_ids[i]] += 1
    assert accepted > n // 20  # the draft path really ran
    for count, exact in zip(counts, marginals, strict=True):
        assert_matches(count, exact, n)
