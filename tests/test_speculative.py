"""In-process speculative generation: exact under greedy, faithful under sampling, clean errors."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from exact import assert_matches, exact_marginals

from specdec.core.errors import InvalidRequest
from specdec.engine.checkpoint import load_model
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.proposer_ngram import NgramProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.speculative import generate

pytestmark = pytest.mark.unit

PROMPTS = [[5, 17, 33, 2, 99, 100, 7], [1], [40, 41, 42, 40, 41, 42, 40, 41], list(range(3, 60))]
GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def target(model_dir: Path) -> ModelRunner:
    return ModelRunner(load_model(model_dir / "target"), num_slots=2)


@pytest.fixture(scope="module")
def drafts(model_dir: Path) -> dict[str, ModelRunner]:
    return {
        name: ModelRunner(load_model(model_dir / name), num_slots=2)
        for name in ("draft_close", "draft_other")
    }


def plain(
    target: ModelRunner, prompt: list[int], n: int, params: SamplingParams = GREEDY
) -> list[int]:
    return generate(target, prompt, params, n, None, 0, stop_token_ids=[]).token_ids


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_greedy_with_draft_model_equals_target_only(target, drafts, prompt, k):
    expected = plain(target, prompt, 40)
    for runner in drafts.values():
        got = generate(target, prompt, GREEDY, 40, DraftModelProposer(runner), k, stop_token_ids=[])
        assert got.token_ids == expected
        assert got.stats.output_tokens == 40


def test_greedy_with_identical_draft_accepts_everything(model_dir, target):
    same = ModelRunner(load_model(model_dir / "target"), num_slots=1)
    got = generate(target, PROMPTS[0], GREEDY, 41, DraftModelProposer(same), 4, stop_token_ids=[])
    assert got.token_ids == plain(target, PROMPTS[0], 41)
    assert got.stats.acceptance_rate == 1.0
    assert got.stats.rounds == 1 + 40 // 5  # the prefill's first token, then 5 tokens a round


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_with_ngram_equals_target_only(target, prompt):
    got = generate(target, prompt, GREEDY, 40, NgramProposer(), 4, stop_token_ids=[])
    assert got.token_ids == plain(target, prompt, 40)


def test_ngram_drafts_run_and_some_are_accepted(target):
    # A random model rarely repeats itself; the repetitive prompt gives lookup something to find.
    got = generate(target, PROMPTS[2], GREEDY, 150, NgramProposer(), 4, stop_token_ids=[])
    assert got.token_ids == plain(target, PROMPTS[2], 150)
    assert got.stats.draft_tokens > 100
    assert 0 < got.stats.accepted_tokens <= got.stats.draft_tokens


class Cycle:
    """A depth policy walking through fixed depths, keeping every round it observes."""

    name = "cycle"

    def __init__(self, depths: list[int]) -> None:
        self.depths, self.seen = depths, []

    def next_depth(self) -> int:
        return self.depths[len(self.seen) % len(self.depths)]

    def observe(self, rnd) -> None:
        self.seen.append(rnd)


def test_depth_policy_observes_every_round_and_varies_k(target, drafts):
    policy = Cycle([0, 1, 5, 2, 8])
    proposer = DraftModelProposer(drafts["draft_close"])
    got = generate(target, PROMPTS[0], GREEDY, 40, proposer, policy, stop_token_ids=[])
    assert got.token_ids == plain(target, PROMPTS[0], 40)
    assert [r.index for r in policy.seen] == list(range(got.stats.rounds))
    assert policy.seen[0].depth == 0 and len(policy.seen[0].token_ids) == 1  # the prefill
    assert got.stats.depths[:5] == [1, 5, 2, 8, 0]  # asked after rounds 0, 1, 2, ...
    assert sum(len(r.token_ids) for r in policy.seen) == 40


def test_stops_at_eos_and_reports_reason(target):
    free = plain(target, PROMPTS[0], 30)
    eos = free[10]
    got = generate(target, PROMPTS[0], GREEDY, 30, NgramProposer(), 4, stop_token_ids=[eos])
    assert got.token_ids == free[: free.index(eos) + 1]
    assert got.finish_reason == "stop"
    assert generate(target, PROMPTS[0], GREEDY, 5, None, 0, [-1]).finish_reason == "length"


def test_context_end_finishes_with_length(model_dir):
    runner = ModelRunner(load_model(model_dir / "target"), num_slots=1, max_seq_len=20)
    got = generate(runner, PROMPTS[0], GREEDY, 100, NgramProposer(), 8, stop_token_ids=[])
    assert len(PROMPTS[0]) + len(got.token_ids) == 20
    assert got.finish_reason == "length"


def test_slots_are_freed_after_success_and_error(target, drafts):
    draft = drafts["draft_close"]
    generate(target, PROMPTS[0], GREEDY, 5, DraftModelProposer(draft), 3)
    with pytest.raises(InvalidRequest):
        generate(target, [10**6], GREEDY, 5, DraftModelProposer(draft), 3)
    assert target.cache.slots_in_use == 0
    assert draft.cache.slots_in_use == 0


@pytest.mark.parametrize(
    ("prompt", "max_tokens", "k", "params", "field"),
    [
        ([], 5, 2, GREEDY, "prompt"),
        ([1, 2, 320], 5, 2, GREEDY, "prompt"),
        ([1] * 256, 5, 2, GREEDY, "prompt"),
        ([1, 2], 0, 2, GREEDY, "max_tokens"),
        ([1, 2], 5, -1, GREEDY, "k"),
        ([1, 2], 5, 17, GREEDY, "k"),
        ([1, 2], 5, 2, SamplingParams(temperature=-1.0), "temperature"),
        ([1, 2], 5, 2, SamplingParams(temperature=1.0, top_p=0.0), "top_p"),
    ],
)
def test_bad_input_names_the_field(target, prompt, max_tokens, k, params, field):
    with pytest.raises(InvalidRequest) as err:
        generate(target, prompt, params, max_tokens, NgramProposer(), k)
    assert err.value.field == field
    assert target.cache.slots_in_use == 0


def test_seeded_sampling_is_reproducible(target, drafts):
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=1234)

    def run(proposer):
        return generate(target, PROMPTS[0], params, 30, proposer, 4, stop_token_ids=[]).token_ids

    draft = drafts["draft_close"]
    assert run(DraftModelProposer(draft)) == run(DraftModelProposer(draft))
    assert run(None) == run(None)
    other = SamplingParams(temperature=1.0, top_p=0.95, seed=4321)
    assert generate(target, PROMPTS[0], other, 30, None, 0).token_ids != run(None)


@pytest.mark.slow
def test_speculative_sampling_keeps_the_target_distribution(target, drafts):
    """Chi-square of the first three generated tokens against the exact target marginals: the
    prefill's token, then a drafted one (accepted or recovered) and a bonus or plain one."""
    params = SamplingParams(temperature=1.5, top_k=6)
    prompt = PROMPTS[0]
    marginals = exact_marginals(target, prompt, params, 3)
    draft = drafts["draft_close"]
    n = 2000
    counts: list[Counter[int]] = [Counter(), Counter(), Counter()]
    accepted = 0
    for seed in range(n):
        p = SamplingParams(temperature=1.5, top_k=6, seed=seed)
        got = generate(
            target,
            prompt,
            p,
            3,
            DraftModelProposer(draft, top_m=4, top_mass=0.8),
            1,
            stop_token_ids=[],
        )
        accepted += got.stats.accepted_tokens
        for i in range(3):
            counts[i][got.token_ids[i]] += 1
    assert accepted > n // 10  # the draft path really ran
    for count, exact in zip(counts, marginals, strict=True):
        assert_matches(count, exact, n)


def test_draft_and_target_slots_hold_committed_tokens_only(model_dir, target):
    """After a run the draft cache mirrors a prefix of what was committed (rollback works)."""
    runner = ModelRunner(load_model(model_dir / "draft_close"), num_slots=1)
    proposer = DraftModelProposer(runner)
    params = GREEDY
    committed = list(PROMPTS[0])
    for _ in range(5):
        proposal = proposer.propose(committed, 4, params, seed=0)
        # It fed everything committed and its own drafts but the last.
        assert proposer.cached == committed + proposal.draft_token_ids[:-1]
        assert runner.cache.length(proposer.slot) == len(proposer.cached)
        committed += proposal.draft_token_ids[:2] + [3]  # accept two, then a "target" token
    proposer.close()
    assert runner.cache.slots_in_use == 0


def test_draft_with_different_folder_copy_loads(tmp_path, model_dir):
    shutil.copytree(model_dir / "target", tmp_path / "copy")
    assert load_model(tmp_path / "copy").config == load_model(model_dir / "target").config
