"""Speculation-depth policies: the goodput model in closed form, each policy's rules, and a
seeded round-by-round simulation comparing the goodput policy with the best fixed depth."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from itertools import pairwise

import pytest

from specdec.core.depth import DepthPolicy, FixedDepth
from specdec.core.limits import MAX_SPEC_DEPTH
from specdec.core.rounds import Round
from specdec.router.depth_goodput import (
    EXPLORE_EVERY,
    PROBE_DEPTH,
    CostModel,
    GoodputDepth,
    best_depth,
    expected_tokens,
)
from specdec.router.depth_heuristic import HeuristicDepth
from specdec.router.depth_policy import DEFAULT_POLICY, POLICIES, make_policy

pytestmark = pytest.mark.unit

MS = 1_000_000  # ns


def observation(
    depth: int,
    num_proposed: int,
    num_accepted: int,
    draft_ns: int,
    verify_ns: int,
    round_ns: int,
    verifier_active: int,
    verifier_queue: int,
) -> Round:
    """The loop's round record with what a policy reads; the rest at neutral values."""
    return Round(
        index=1,
        position=10,
        depth=depth,
        num_proposed=num_proposed,
        num_accepted=num_accepted,
        token_ids=(1,) * (num_accepted + 1),
        finish=None,
        ahead="",
        draft_ns=draft_ns,
        verify_ns=verify_ns,
        queue_ns=0,
        service_ns=verify_ns,
        rtt_ns=verify_ns,
        round_ns=round_ns,
        verifier_active=verifier_active,
        verifier_queue=verifier_queue,
    )


# --- A small deterministic simulator ------------------------------------------------------------


@dataclass(frozen=True)
class Regime:
    """One request's world: acceptance, costs (ns) and what the verifier reports."""

    alpha: float  # per-position acceptance probability
    draft_ns_per_token: int
    verify_base_ns: int
    verify_ns_per_token: int
    overhead_ns: int
    verifier_active: int = 1
    verifier_queue: int = 0
    # A cold draft (the round before drafted nothing) catches up first: extra wait.
    cold_draft_ns: int = 0

    def verify_ns(self, k: int) -> float:
        return self.verify_base_ns + self.verify_ns_per_token * (k + 1)

    def round_ns(self, k: int) -> float:
        return k * self.draft_ns_per_token + self.verify_ns(k) + self.overhead_ns

    def fixed_rate(self, k: int) -> float:
        """Exact expected tokens per ns of a fixed depth k."""
        return expected_tokens(self.alpha, k) / self.round_ns(k)


def play_round(
    policy: DepthPolicy, regime: Regime, rng: random.Random, jitter: float, cold: bool = False
) -> tuple:
    """One round: ask for k, accept each draft with probability alpha until the first miss,
    time it with +-jitter noise, report it (``cold``: the round before drafted nothing).
    Returns (k, tokens committed, round_ns)."""
    k = policy.next_depth()
    accepted = 0
    while accepted < k and rng.random() < regime.alpha:
        accepted += 1
    draft_ns = int(k * regime.draft_ns_per_token * (1 + jitter * (2 * rng.random() - 1)))
    if k and cold:
        draft_ns += regime.cold_draft_ns
    verify_ns = int(regime.verify_ns(k) * (1 + jitter * (2 * rng.random() - 1)))
    round_ns = draft_ns + verify_ns + regime.overhead_ns
    obs = observation(
        depth=k,
        num_proposed=k,
        num_accepted=accepted,
        draft_ns=draft_ns,
        verify_ns=verify_ns,
        round_ns=round_ns,
        verifier_active=regime.verifier_active,
        verifier_queue=regime.verifier_queue,
    )
    policy.observe(obs)
    return k, accepted + 1, round_ns


def simulate(
    policy: DepthPolicy, regime: Regime, rounds: int, seed: int = 0, jitter: float = 0.1
) -> tuple[float, list[int]]:
    """Tokens per ns over ``rounds`` rounds, and the depths chosen."""
    rng = random.Random(seed)
    tokens = elapsed = 0
    depths = [0]  # the prefill's round drafts nothing
    for _ in range(rounds):
        k, committed, round_ns = play_round(policy, regime, rng, jitter, cold=depths[-1] == 0)
        depths.append(k)
        tokens += committed
        elapsed += round_ns
    return tokens / elapsed, depths[1:]


def median_tail(depths: list[int], n: int = 50) -> int:
    """The median of the last ``n`` depths."""
    return sorted(depths[-n:])[n // 2]


CHEAP_ACCURATE = Regime(0.9, MS // 2, 20 * MS, MS // 5, 2 * MS)
MEDIUM = Regime(0.7, 2 * MS, 20 * MS, MS // 2, 2 * MS)
USELESS = Regime(0.02, 2 * MS, 20 * MS, MS // 5, 2 * MS)
SLOW_DRAFT = Regime(0.8, 20 * MS, 20 * MS, MS // 5, 2 * MS)  # a draft token costs a verify step
# Compute-bound verifier: every verified token costs twice the fixed part of a step.
SATURATED = Regime(0.8, MS, 5 * MS, 10 * MS, 2 * MS)
# The demo pair through the pipeline: a cold draft's answer takes several warm ones.
COLD_STARTS = Regime(0.8, MS // 2, 5 * MS, MS // 2, MS, cold_draft_ns=10 * MS)


# --- The model in closed form -------------------------------------------------------------------


def test_expected_tokens_closed_form():
    assert expected_tokens(0.0, 5) == 1.0  # only the verifier's own token
    assert expected_tokens(1.0, 5) == 6.0  # every draft plus the bonus token
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens(0.8, 0) == 1.0
    for alpha in (0.1, 0.6, 0.95):
        for k in range(MAX_SPEC_DEPTH + 1):
            assert expected_tokens(alpha, k) == pytest.approx(sum(alpha**i for i in range(k + 1)))
    assert expected_tokens(1 - 1e-13, 7) == pytest.approx(8.0)  # continuous at alpha = 1
    assert expected_tokens(1 - 1e-6, 7) == pytest.approx(8.0, rel=1e-4)


def test_expected_tokens_matches_sampling():
    rng = random.Random(3)
    alpha, k, n = 0.7, 4, 20_000
    total = 0
    for _ in range(n):
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        total += accepted + 1
    assert total / n == pytest.approx(expected_tokens(alpha, k), rel=0.02)


def cost(draft: float = 0.5, v0: float = 20.0, v1: float = 0.2, overhead: float = 2.0) -> CostModel:
    return CostModel(draft * MS, v0 * MS, v1 * MS, overhead * MS)


def test_best_depth_zero_when_drafts_are_rejected_or_as_slow_as_a_verify_step():
    assert best_depth(0.01, cost(), 8) == 0
    assert best_depth(0.8, cost(draft=20.0), 8) == 0  # a draft token costs a whole step
    assert best_depth(0.8, cost(), 0) == 0


def test_best_depth_large_when_accurate_and_cheap():
    assert best_depth(0.95, cost(draft=0.2), 8) == 8
    assert best_depth(0.95, cost(draft=0.2), 16) >= 12


def test_best_depth_falls_as_draft_cost_rises():
    depths = [best_depth(0.8, cost(draft=d), MAX_SPEC_DEPTH) for d in (0.1, 0.5, 1, 2, 4, 8, 32)]
    assert depths == sorted(depths, reverse=True)
    assert depths[0] > depths[-1] == 0


def test_best_depth_falls_as_verify_tokens_get_expensive():
    depths = [best_depth(0.8, cost(v1=v1), MAX_SPEC_DEPTH) for v1 in (0.1, 1, 4, 10, 40)]
    assert depths == sorted(depths, reverse=True)
    assert depths[0] > depths[-1]


def test_best_depth_breaks_ties_towards_smaller_k():
    # alpha = 1 and all cost per token: every k gives the same rate.
    assert best_depth(1.0, CostModel(10.0, 0.0, 10.0, 0.0), 8) == 0


# --- The goodput policy -------------------------------------------------------------------------


def observe(policy: DepthPolicy, *, k: int, accepted: int, **kw: int) -> None:
    """Report one round with fixed timings (ns), overridable by keyword."""
    fields = dict(draft_ns=k * MS, verify_ns=20 * MS + k * MS // 5, verifier_active=1)
    fields.update(kw)
    fields.setdefault("round_ns", fields["draft_ns"] + fields["verify_ns"] + 2 * MS)
    fields.setdefault("verifier_queue", 0)
    policy.observe(observation(depth=k, num_proposed=k, num_accepted=accepted, **fields))


def test_goodput_starts_at_its_initial_depth():
    assert GoodputDepth().next_depth() == 4
    assert GoodputDepth(max_depth=2).next_depth() == 2
    assert GoodputDepth(initial_depth=6).next_depth() == 6
    with pytest.raises(ValueError, match="initial_depth"):
        GoodputDepth(max_depth=4, initial_depth=5)


def test_goodput_ignores_the_timings_of_the_prefill_round():
    policy = GoodputDepth()
    observe(policy, k=4, accepted=4, draft_ns=900 * MS, verify_ns=2000 * MS)  # prompt prefill
    assert policy.cost_model() is None
    assert policy.next_depth() == 4
    observe(policy, k=4, accepted=4)
    model = policy.cost_model()
    assert model is not None
    # One depth seen: the prior splits its 4 ms of drafting into the call and the tokens.
    assert model.draft_base_ns + 4 * model.draft_ns_per_token == pytest.approx(4 * MS)
    assert model.round_ns(4) == pytest.approx(4 * MS + 20 * MS + 4 * MS // 5 + 2 * MS)


def test_goodput_counts_acceptance_per_position():
    policy = GoodputDepth()
    assert policy.alpha == pytest.approx(0.6)  # the prior
    observe(policy, k=4, accepted=2)  # 2 successes, 1 failure; positions 3, 4 unobserved
    assert policy.alpha == pytest.approx((2.4 * 0.9 + 2) / (4 * 0.9 + 3))
    observe(policy, k=4, accepted=4)  # all accepted: no failure
    s, f = (2.4 * 0.9 + 2) * 0.9 + 4, (1.6 * 0.9 + 1) * 0.9
    assert policy.alpha == pytest.approx(s / (s + f))
    before = policy.alpha
    observe(policy, k=0, accepted=0)  # nothing proposed: nothing learnt, nothing forgotten
    policy.observe(observation(4, 0, 0, MS, 20 * MS, 22 * MS, 1, 0))  # prompt lookup: none
    assert policy.alpha == before


def test_goodput_fits_verify_time_linear_in_tokens():
    policy = GoodputDepth()
    observe(policy, k=4, accepted=0)  # prefill round, timings ignored
    for k in (4, 2, 6, 4, 1, 8):  # verify = 10 ms + 3 ms per token, exactly
        observe(policy, k=k, accepted=0, verify_ns=10 * MS + 3 * MS * (k + 1))
    model = policy.cost_model()
    assert model is not None
    # The weak slope prior (v1 = 5 % of v0) biases the fit by a few percent at most.
    assert model.verify_base_ns == pytest.approx(10 * MS, rel=0.05)
    assert model.verify_ns_per_token == pytest.approx(3 * MS, rel=0.05)
    assert model.draft_ns_per_token == pytest.approx(MS, rel=0.05)  # drafting: 1 ms a token
    assert model.draft_base_ns == pytest.approx(0, abs=0.1 * MS)
    assert model.overhead_ns == pytest.approx(2 * MS)


def test_goodput_separates_the_call_to_the_draft_from_its_tokens():
    policy = GoodputDepth()
    observe(policy, k=4, accepted=0)  # prefill round, timings ignored
    for k in (4, 2, 6, 4, 1, 8):  # a 1 ms round trip plus 0.5 ms a token
        observe(policy, k=k, accepted=0, draft_ns=MS + k * MS // 2)
    model = policy.cost_model()
    assert model is not None
    assert model.draft_base_ns == pytest.approx(MS, rel=0.1)
    assert model.draft_ns_per_token == pytest.approx(MS / 2, rel=0.1)
    assert model.round_ns(0) == pytest.approx(
        model.verify_base_ns + model.verify_ns_per_token + 2 * MS
    )


def test_goodput_assumes_a_small_verify_slope_from_a_single_depth():
    policy = GoodputDepth()
    observe(policy, k=4, accepted=4)  # prefill round, timings ignored
    observe(policy, k=4, accepted=4, verify_ns=25 * MS)
    model = policy.cost_model()
    assert model is not None
    assert model.verify_base_ns + 5 * model.verify_ns_per_token == pytest.approx(25 * MS)
    assert model.verify_ns_per_token == pytest.approx(0.05 * model.verify_base_ns)


@pytest.mark.parametrize("regime", [USELESS, SLOW_DRAFT], ids=["useless", "slow_draft"])
def test_goodput_settles_on_zero_when_speculation_does_not_pay(regime: Regime):
    _, depths = simulate(GoodputDepth(), regime, rounds=200)
    tail = depths[-100:]
    assert tail.count(0) >= 90  # the rest are probes


def test_goodput_goes_deep_when_drafts_are_accurate_and_cheap():
    _, depths = simulate(GoodputDepth(max_depth=8), replace(CHEAP_ACCURATE, alpha=0.95), 100)
    assert min(depths[-50:]) >= 6


def test_goodput_depth_falls_as_draft_cost_rises():
    medians = []
    for draft_ns in (MS // 10, MS, 4 * MS, 20 * MS):
        _, depths = simulate(GoodputDepth(), replace(MEDIUM, draft_ns_per_token=draft_ns), 150)
        medians.append(median_tail(depths))
    assert medians == sorted(medians, reverse=True)
    assert medians[0] > medians[-1] == 0


def test_goodput_picks_smaller_k_on_a_saturated_verifier():
    _, idle = simulate(GoodputDepth(), MEDIUM, 150)
    # Measured: each verified token costs a lot.
    _, costly = simulate(GoodputDepth(), replace(MEDIUM, verify_ns_per_token=8 * MS), 150)
    assert median_tail(costly) < median_tail(idle)
    # Reported: same timings, but a full batch and a queue raise the price of a verify token.
    _, loaded = simulate(GoodputDepth(), replace(MEDIUM, verifier_active=32, verifier_queue=8), 150)
    assert median_tail(loaded) < median_tail(idle)


def test_goodput_probes_at_zero_and_recovers_when_text_gets_predictable():
    policy = GoodputDepth()
    rng = random.Random(1)
    useless = replace(CHEAP_ACCURATE, alpha=0.0, draft_ns_per_token=4 * MS)
    depths = [play_round(policy, useless, rng, 0.0)[0] for _ in range(300)]
    tail = depths[-200:]
    probes = [i for i, k in enumerate(tail) if k]
    assert {tail[i] for i in probes} == {PROBE_DEPTH}
    assert all(b - a == EXPLORE_EVERY + 1 for a, b in pairwise(probes))
    assert len(probes) >= 200 // (EXPLORE_EVERY + 1)
    # The text becomes predictable: within a few probes speculation resumes and deepens.
    easy = replace(useless, alpha=0.95)
    depths = [play_round(policy, easy, rng, 0.0)[0] for _ in range(120)]
    assert min(depths[-40:]) >= 2


def test_goodput_is_deterministic():
    runs = [simulate(GoodputDepth(), MEDIUM, 200, seed=5)[1] for _ in range(2)]
    assert runs[0] == runs[1]


# --- Against the best fixed depth, in simulation ------------------------------------------------


@pytest.mark.parametrize(
    "regime",
    [CHEAP_ACCURATE, MEDIUM, USELESS, SLOW_DRAFT, SATURATED, COLD_STARTS],
    ids=["cheap_accurate", "medium", "useless", "slow_draft", "saturated", "cold"],
)
def test_goodput_close_to_the_best_fixed_depth(regime: Regime):
    fixed = [regime.fixed_rate(k) for k in range(9)]
    for seed in range(3):
        rate, _ = simulate(GoodputDepth(max_depth=8), regime, rounds=400, seed=seed)
        assert rate >= 0.9 * max(fixed)
        assert rate >= 0.95 * fixed[0]  # probes at k = 0 cost a little


def test_goodput_under_reported_load_trades_little_of_its_own_speed():
    """With a full batch and a queue the policy charges itself for delaying other sequences, so
    it may run below its own best fixed depth, but not below plain decoding."""
    regime = replace(SATURATED, verifier_active=32, verifier_queue=4)
    fixed = [regime.fixed_rate(k) for k in range(9)]
    for seed in range(3):
        rate, depths = simulate(GoodputDepth(max_depth=8), regime, rounds=400, seed=seed)
        assert rate >= 0.95 * fixed[0]
        assert rate >= 0.85 * max(fixed)
        assert max(depths[-100:]) <= PROBE_DEPTH


# --- The heuristic policy -----------------------------------------------------------------------


def test_heuristic_grows_on_full_acceptance_up_to_max_depth():
    policy = HeuristicDepth(max_depth=6)
    assert policy.next_depth() == 4
    for expected in (5, 6, 6):
        k = policy.next_depth()
        observe(policy, k=k, accepted=k)
        assert policy.next_depth() == expected


def test_heuristic_shrinks_on_rejection_halves_on_a_first_draft_miss_never_below_one():
    policy = HeuristicDepth(max_depth=8, initial_depth=8)
    observe(policy, k=8, accepted=3)
    assert policy.next_depth() == 7
    observe(policy, k=7, accepted=0)
    assert policy.next_depth() == 3
    for _ in range(4):
        observe(policy, k=policy.next_depth(), accepted=0)
    assert policy.next_depth() == 1


def test_heuristic_holds_when_the_draft_delivers_fewer_than_asked():
    policy = HeuristicDepth()
    policy.observe(observation(4, 2, 2, MS, 20 * MS, 23 * MS, 1, 0))  # short, all accepted
    assert policy.next_depth() == 4
    policy.observe(observation(4, 0, 0, MS, 20 * MS, 23 * MS, 1, 0))  # nothing proposed
    assert policy.next_depth() == 4


# --- Registry, fixed policy, observation checks, bounds -----------------------------------------


def test_make_policy_builds_each_registered_policy():
    assert DEFAULT_POLICY == "goodput"
    assert set(POLICIES) == {"fixed", "heuristic", "goodput"}
    for name in POLICIES:
        assert make_policy(name).name == name
    assert make_policy("fixed", fixed_depth=3).next_depth() == 3
    assert make_policy("fixed", fixed_depth=0).next_depth() == 0


def test_make_policy_rejects_bad_input_naming_it():
    with pytest.raises(ValueError, match="fixed, heuristic, goodput") as info:
        make_policy("greedy")
    assert "'greedy'" in str(info.value)
    with pytest.raises(ValueError, match="max_depth"):
        make_policy("goodput", max_depth=MAX_SPEC_DEPTH + 1)
    with pytest.raises(ValueError, match="max_depth"):
        make_policy("heuristic", max_depth=0)
    with pytest.raises(ValueError, match="fixed_depth"):
        make_policy("fixed", fixed_depth=9, max_depth=8)
    with pytest.raises(ValueError, match="fixed_depth"):
        FixedDepth(-1)


def test_fixed_policy_ignores_what_it_observes():
    policy = FixedDepth(5)
    observe(policy, k=5, accepted=0)
    assert policy.next_depth() == 5


def test_round_record_rejects_impossible_counts():
    with pytest.raises(ValueError, match="num_accepted <= num_proposed <= depth"):
        observation(2, 3, 0, 0, 0, 0, 1, 0)
    with pytest.raises(ValueError, match="num_accepted <= num_proposed <= depth"):
        observation(4, 2, 3, 0, 0, 0, 1, 0)
    with pytest.raises(ValueError, match="must be >= 0"):
        observation(4, 4, 2, 0, -1, 0, 1, 0)


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("max_depth", [1, 3, 8, MAX_SPEC_DEPTH])
def test_every_policy_returns_ints_within_bounds(name: str, max_depth: int):
    rng = random.Random(max_depth)
    policy = make_policy(name, fixed_depth=min(4, max_depth), max_depth=max_depth)
    for _ in range(150):  # a world that changes every round, extremes included
        regime = Regime(
            alpha=rng.choice([0.0, 0.3, 0.9, 1.0]),
            draft_ns_per_token=rng.choice([0, MS, 30 * MS]),
            verify_base_ns=rng.choice([0, 20 * MS]),
            verify_ns_per_token=rng.choice([0, MS, 20 * MS]),
            overhead_ns=rng.choice([0, 5 * MS]),
            verifier_active=rng.choice([0, 1, 64]),
            verifier_queue=rng.choice([0, 10]),
        )
        k, _, _ = play_round(policy, regime, rng, jitter=0.5)
        assert type(k) is int
        assert 0 <= k <= max_depth


def test_goodput_learns_drafting_from_on_demand_rounds_and_discounts_it_by_ahead_hits():
    policy = GoodputDepth()
    observe(policy, k=4, accepted=4)  # the prefill's round: timings ignored
    observe(policy, k=4, accepted=4, draft_ns=8 * MS)  # on demand: 2 ms per draft
    before = policy.cost_model()
    assert before is not None
    drafting = before.draft_base_ns + 4 * before.draft_ns_per_token
    assert drafting == pytest.approx(8 * MS)
    hit = replace(observation(4, 4, 4, 0, 20 * MS, 22 * MS, 1, 0), ahead="hit")
    policy.observe(hit)  # ready at once: says nothing about the cost of drafting
    after = policy.cost_model()
    assert after is not None
    assert after.draft_base_ns + 4 * after.draft_ns_per_token == pytest.approx(drafting)
    assert after.ahead_hit_rate == pytest.approx(1.0)  # the round before accepted everything
    alpha = policy.alpha
    assert after.round_ns(4, alpha) < after.round_ns(4, 0.0)  # drafting discounted by H·alpha^k
    assert CostModel(MS, 0, 0, 0, 1.0, MS).round_ns(3, 1.0) == pytest.approx(0.0)


def test_goodput_prices_plain_decoding_from_plain_rounds():
    """Drafting slows the verifier beside it: the line through drafting rounds prices k = 0
    too high; the plain rounds a request runs say what k = 0 really costs."""
    policy = GoodputDepth()
    observe(policy, k=0, accepted=0)  # the prefill's round
    for k in (2, 2, 3):
        observe(policy, k=k, accepted=0, verify_ns=41 * MS + k * MS // 2)
    line = policy.cost_model()
    assert line is not None and line.plain_verify_ns is None
    assert line.round_ns(0) > 40 * MS
    observe(policy, k=0, accepted=0, verify_ns=27 * MS)
    cost = policy.cost_model()
    assert cost is not None and cost.plain_verify_ns == pytest.approx(27 * MS)
    assert cost.round_ns(0) == pytest.approx(27 * MS + cost.overhead_ns)


def test_goodput_ignores_the_wait_of_a_cold_draft():
    """The first drafting round after one that drafted nothing waits for the draft to catch up:
    that wait is not what a drafted token costs (it kept the policy at k = 0)."""
    policy = GoodputDepth()
    observe(policy, k=0, accepted=0)  # the prefill's round
    observe(policy, k=4, accepted=4, draft_ns=30 * MS)  # cold: ignored
    assert policy.cost_model() is None
    observe(policy, k=4, accepted=4, draft_ns=2 * MS)  # warm
    model = policy.cost_model()
    assert model is not None
    assert model.draft_base_ns + 4 * model.draft_ns_per_token == pytest.approx(2 * MS)
    _, depths = simulate(GoodputDepth(), COLD_STARTS, rounds=100, jitter=0.0)
    assert min(depths[-50:]) >= 3
