"""Draft-ahead: outcome ranking, branch forks, the speculation cache, and exactness in process."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from exact import assert_matches, exact_marginals

from specdec.core.rounds import Proposal
from specdec.core.spec_cache import SpeculationCache
from specdec.engine.batch import Chunk
from specdec.engine.checkpoint import load_model
from specdec.engine.draft_ahead import Acceptance, fork, likely_outcomes
from specdec.engine.draft_engine import Ahead, DraftEngine, wave
from specdec.engine.proposer_draft import DraftModelProposer
from specdec.engine.runner import ModelRunner
from specdec.engine.sampling import SamplingParams
from specdec.engine.sequence import SequenceState
from specdec.engine.speculative import generate

pytestmark = pytest.mark.unit

GREEDY = SamplingParams()
PROMPTS = [[5, 17, 33, 2, 99, 100, 7], [1], list(range(3, 60))]


@pytest.fixture(scope="module")
def target(model_dir: Path) -> ModelRunner:
    return ModelRunner(load_model(model_dir / "target"), num_slots=2)


@pytest.fixture(scope="module")
def draft(model_dir: Path) -> ModelRunner:
    return ModelRunner(load_model(model_dir / "draft_close"), num_slots=24)


# --- ranking outcomes ------------------------------------------------------------------------


def test_outcomes_are_ranked_by_their_estimated_probability():
    # Two drafts; the draft's top tokens at positions 0, 1 and after the last draft.
    drafts, probs = [7, 8], [0.6, 0.5]
    top_ids = [[7, 1, 2], [8, 3, 4], [9, 5, 6]]
    top_probs = [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.7, 0.2, 0.1]]
    alpha = 0.8
    got = likely_outcomes(drafts, probs, top_ids, top_probs, 10, alpha)
    reject = 1 - alpha
    expected = {
        (0, 1): reject * 0.3 / 0.4,  # rejected at 0, replaced by 1
        (0, 2): reject * 0.1 / 0.4,
        (1, 3): alpha * reject * 0.4 / 0.5,
        (1, 4): alpha * reject * 0.1 / 0.5,
        (2, 9): alpha**2 * alpha,  # both accepted, the bonus is the draft's own guess
        (2, 5): alpha**2 * reject * 0.2 / 0.3,
        (2, 6): alpha**2 * reject * 0.1 / 0.3,
    }
    assert {(o.num_accepted, o.next_token_id): o.score for o in got} == pytest.approx(expected)
    assert [o.score for o in got] == sorted((o.score for o in got), reverse=True)
    assert (got[0].num_accepted, got[0].next_token_id) == (2, 9)
    assert len(likely_outcomes(drafts, probs, top_ids, top_probs, 3, alpha)) == 3
    # A poor draft: rejections at the first position come first.
    poor = likely_outcomes(drafts, probs, top_ids, top_probs, 2, 0.1)
    assert [(o.num_accepted, o.next_token_id) for o in poor] == [(0, 1), (0, 2)]


def test_a_rejected_draft_is_never_its_own_replacement():
    got = likely_outcomes([4], [0.9], [[4, 5]], [[0.9, 0.1]], 8, 0.5)
    assert [(o.num_accepted, o.next_token_id) for o in got] == [(0, 5)]
    # The first token of a sequence: no drafts, the draft's guess first.
    first = likely_outcomes([], [], [[3, 1]], [[0.5, 0.25]], 8, 0.6)
    assert [(o.num_accepted, o.next_token_id) for o in first] == [(0, 3), (0, 1)]
    assert first[1].score == pytest.approx(0.4 * 0.25 / 0.5)


def test_acceptance_learns_from_what_the_verifier_kept():
    acc = Acceptance(prior=0.5, weight=2.0, decay=1.0)
    acc.observe([1, 2, 3], [1, 2, 3, 9])  # all kept, then a bonus token
    assert acc.rate == pytest.approx(4 / 5)
    acc.observe([1, 2, 3], [1, 7])  # one kept, then a replacement
    assert acc.rate == pytest.approx(5 / 7)


# --- forking a branch --------------------------------------------------------------------------


def test_fork_then_continue_equals_a_clean_run(draft: ModelRunner):
    state = [5, 6, 7, 8, 9, 10]
    src = SequenceState(draft.cache.allocate(), list(state), GREEDY, 0)
    dst = SequenceState(draft.cache.allocate(), [], GREEDY, 0)
    clean = SequenceState(draft.cache.allocate(), [], GREEDY, 0)
    try:
        draft.step([Chunk(src.slot, state, 0, 1)])
        src.cached = list(state)
        dst.cached = [5, 6, 99]  # a stale branch: shares two tokens, copies the rest
        draft.step([Chunk(dst.slot, dst.cached, 0, 1)])
        fork(draft, src, dst, 4, state[:4] + [42])
        assert dst.cached == state[:4] and draft.cache.length(dst.slot) == 4
        forked = draft.step([Chunk(dst.slot, [42], 4, 1)])[0]
        fresh = draft.step([Chunk(clean.slot, state[:4] + [42], 0, 1)])[0]
        assert forked.allclose(fresh, atol=1e-5)
    finally:
        for seq in (src, dst, clean):
            draft.cache.free(seq.slot)


def test_fork_refuses_a_source_without_the_prefix(draft: ModelRunner):
    src = SequenceState(draft.cache.allocate(), [1, 2], GREEDY, 0, cached=[1])
    dst = SequenceState(draft.cache.allocate(), [], GREEDY, 0)
    try:
        with pytest.raises(ValueError, match="does not hold"):
            fork(draft, src, dst, 2, [1, 2, 3])
    finally:
        draft.cache.free(src.slot)
        draft.cache.free(dst.slot)


# --- the speculation cache ----------------------------------------------------------------------


def test_cache_takes_only_the_exact_state_and_forgets_what_cannot_match():
    cache = SpeculationCache()
    a, b, c = Proposal((1,)), Proposal((2,)), Proposal((3,))
    cache.put(3, [7, 8], a)  # state: committed[:3] + [7, 8]
    cache.put(3, [9], b)
    cache.put(5, [4, 4], c)
    assert cache.take([0, 0, 0, 7, 9]) is None  # right length, other tokens
    assert len(cache) == 1  # states of length <= 5 can no longer match
    assert cache.take([0, 0, 0, 7, 9, 4, 4]) is c
    assert len(cache) == 0


def test_cache_is_bounded():
    cache = SpeculationCache(max_entries=4)
    for i in range(10):
        cache.put(i, [1], Proposal((i,)))
    assert len(cache) <= 4
    assert cache.take(list(range(9)) + [1]) is not None  # the newest survive


# --- the draft engine ----------------------------------------------------------------------------


def test_engine_drafts_ahead_and_a_hit_adopts_the_branch(draft: ModelRunner):
    engine = DraftEngine(draft, draft.vocab_size, 4, 1.0)
    sent: list[tuple[int, list]] = []
    dseq = engine.open(
        [5, 6, 7], GREEDY, 0, Ahead(width=3, depth=2), lambda b, r: sent.append((b, r))
    )
    engine.drain()
    assert len(sent) == 3 and {base for base, _ in sent} == {3}  # the likeliest first tokens
    [(context, proposal)] = sent[0][1]
    assert len(context) == 1 and len(proposal) == 2
    # The verifier's first token is that outcome: the branch is adopted, no drafting needed.
    committed = [5, 6, 7, *context]
    engine.step(dseq, committed, 0, 2, Ahead(width=3, depth=2))
    assert dseq.main.committed == committed
    assert dseq.main.cached[: len(committed)] == committed
    engine.drain()
    assert len(sent) == 6 and sent[-1][0] == len(committed)  # ahead of the next verification
    engine.close(dseq)
    assert draft.cache.slots_in_use == 0


def test_ahead_work_runs_in_waves_of_rank():
    assert [wave(rank) for rank in range(8)] == [0, 1, 1, 2, 2, 2, 2, 3]


def test_the_likeliest_outcome_is_drafted_and_sent_first(draft: ModelRunner):
    engine = DraftEngine(draft, draft.vocab_size, 4, 1.0)
    sent: list[int] = []

    def sink(base: int, results: list) -> None:
        sent.extend(context[0] for context, _ in results)

    dseq = engine.open([5, 6, 7], GREEDY, 0, Ahead(width=4, depth=3), sink)
    engine.drain()
    first_tokens = dseq.current.cursor.top_ids[0]  # the draft's likeliest first tokens
    assert sent[0] == first_tokens[0]
    assert set(sent[1:3]) == set(first_tokens[1:3]) and sent[3] == first_tokens[3]
    engine.close(dseq)


def test_engine_gives_back_branch_slots_to_new_sequences(model_dir: Path):
    runner = ModelRunner(load_model(model_dir / "draft_close"), num_slots=4)
    engine = DraftEngine(runner, runner.vocab_size, 4, 1.0)
    first = engine.open([5, 6, 7], GREEDY, 0, Ahead(width=8, depth=2), lambda b, r: None)
    engine.drain()
    assert runner.cache.slots_free == 0  # its branches took every slot
    second = engine.open([1, 2], GREEDY, 0)  # takes one back
    engine.close(first)
    engine.close(second)
    assert runner.cache.slots_in_use == 0


# --- exactness in process ------------------------------------------------------------------------


def plain(target: ModelRunner, prompt: list[int], n: int, params=GREEDY) -> list[int]:
    return generate(target, prompt, params, n, None, 0, stop_token_ids=[]).token_ids


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize(("k", "width"), [(1, 2), (3, 8), (6, 4)])
def test_greedy_with_draft_ahead_equals_target_only(target, draft, prompt, k, width):
    got = generate(
        target,
        prompt,
        GREEDY,
        40,
        DraftModelProposer(draft),
        k,
        stop_token_ids=[],
        ahead_width=width,
    )
    assert got.token_ids == plain(target, prompt, 40)
    assert got.stats.ahead_hits > 0
    drafting_rounds = sum(1 for k in got.stats.depths if k)
    assert got.stats.ahead_hits + got.stats.ahead_misses == drafting_rounds
    assert draft.cache.slots_in_use == 0


def test_an_identical_draft_hits_nearly_every_round(model_dir, target):
    same = ModelRunner(load_model(model_dir / "target"), num_slots=8)
    got = generate(
        target,
        PROMPTS[0],
        GREEDY,
        41,
        DraftModelProposer(same),
        4,
        stop_token_ids=[],
        ahead_width=2,
    )
    assert got.token_ids == plain(target, PROMPTS[0], 41)
    assert got.stats.ahead_misses <= 1  # the bonus token is the draft's own next guess
    assert got.stats.ahead_hits_after_full == got.stats.ahead_rounds_after_full > 0


@pytest.mark.slow
def test_sampling_with_draft_ahead_keeps_the_target_distribution(target, draft):
    """Chi-square of the first three tokens with every proposal after the first token taken
    from the speculation cache when one matches."""
    params = SamplingParams(temperature=1.5, top_k=6)
    prompt = PROMPTS[0]
    marginals = exact_marginals(target, prompt, params, 3)
    n = 2000
    counts: list[Counter[int]] = [Counter(), Counter(), Counter()]
    hits = 0
    for seed in range(n):
        p = SamplingParams(temperature=1.5, top_k=6, seed=seed)
        proposer = DraftModelProposer(draft, top_m=4, top_mass=0.8)
        got = generate(target, prompt, p, 3, proposer, 1, stop_token_ids=[], ahead_width=6)
        hits += got.stats.ahead_hits
        for i in range(3):
            counts[i][got.token_ids[i]] += 1
    assert hits > n // 2  # most drafted rounds took their proposal from the cache
    for count, exact in zip(counts, marginals, strict=True):
        assert_matches(count, exact, n)
