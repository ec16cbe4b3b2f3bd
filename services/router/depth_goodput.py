"""Goodput depth policy (the default): the k that maximises this request's expected tokens/s.

Model. Draft tokens are accepted independently with probability alpha per position, up to the
first rejection (Leviathan et al. 2023, arXiv 2211.17192, section 3.5). A round of depth k then
commits, the verifier's own token included,

    E(k) = (1 - alpha^(k+1)) / (1 - alpha)        tokens   (k + 1 when alpha = 1)

and costs

    T(k) = (c + k * d) * (1 - H * alpha^k)  +  v0 + v1_eff * (k + 1)  +  o   ns

with c + k * d the time a round waits for k tokens drafted on demand (c: the call itself, a
round trip to the draft replica; d per token; no call at k = 0), H the share of fully
accepted rounds after which draft-ahead had the next proposal ready (see Estimates),
v0 + v1 * (k + 1) the verifier forward time for k + 1 tokens, v1_eff = v1 * (1 + LOAD_SHARE *
pressure) (see Load), and o the rest of the round (network, router). At k = 0 the verifier's
time is P, measured on plain rounds when there have been any (see Estimates), else v0 + v1_eff.
The policy picks argmax E(k) / T(k) over [0, max_depth], ties to the smaller k.

Estimates, all from this request's rounds only, recent rounds weighted more:

- alpha: Beta posterior mean successes / (successes + failures). A round with n proposed and a
  accepted adds a successes and one failure if a < n (positions after the first rejection are
  not observed). The prior is PRIOR_ALPHA with PRIOR_WEIGHT pseudo-tokens and decays with the
  evidence (ACCEPT_DECAY per round that proposed anything), so useless drafts drive alpha to ~0.
- c, d: fitted like v0, v1 below, over the draft time at each depth, with the ridge prior
  d = DRAFT_SLOPE_PRIOR * c. Only warm rounds whose proposal was drafted on demand count. A
  round is cold when the round before it drafted nothing (the prefill's round, or a plain
  round): the draft then catches up on every token it was not told, and its first answer of a
  request also waits for its prompt prefill, so a cold wait is several warm ones (demo pair,
  two CPUs: 10-13 ms against 2-4 ms), and counting it kept the policy at k = 0 for the rest of
  the request. A
  proposal drafted ahead cost nothing on the critical path, but how often one is ready falls
  as k grows (the verification must accept every draft, and the draft must finish in time), so
  counting hits as free drafting led the policy to ask for more than draft-ahead delivers
  (measured on the demo pair: mean k 4.1 against 3.1, and 0.92× the throughput with draft-ahead
  on). The call's own cost is its own term because across processes it is not small (a round
  trip, ~1 ms on two CPUs): folded into d it made every small k look dear per token.
- o: decayed mean (TIME_DECAY) of round_ns - draft_ns - verify_ns (clamped at 0).
- H: decayed hit rate of draft-ahead (ACCEPT_DECAY) over the rounds that follow a fully
  accepted round. Draft-ahead works first on the verification's likeliest outcome, every draft
  accepted, so the drafting of a round at depth k is skipped with probability about H·alpha^k:
  its expected cost is (c + k·d)·(1 − H·alpha^k). Without draft-ahead H stays 0.
- v0, v1: weighted least squares over the decayed mean verify time at each number of verified
  tokens x = num_proposed + 1 (weights decay by VERIFY_DECAY per round), with a weak ridge prior
  v1 = VERIFY_SLOPE_PRIOR * v0. With one x seen the prior decides the slope (5 % of a step per
  extra token), so speculation still looks a little costly and k keeps moving; once several
  depths have been seen the data decides. Negative fits are clamped (v1 >= 0, v0 >= 0).
- P: decayed mean (VERIFY_DECAY) of the verify time of plain rounds (k = 0), which need not lie
  on the line: while the verifier checks drafts the draft replica works ahead, and where the two
  share a machine's memory bandwidth that slows the verifier (the real pair on two CPUs: a
  decode step of 27-30 ms alone, 37-52 ms beside the drafting draft). P is only learnt from the
  plain rounds a request runs anyway (after a poor start, between probes): forcing one to
  measure it when speculation's predicted edge was under 1.3x cost the demo pair 5-10 % of
  its throughput through the pipeline (a plain round also leaves the next one cold, above).

Load. v0 and v1 as measured are this request's own costs: in a busy batch v1 is the small
marginal compute of one more token. The same extra tokens also delay every other sequence in
the verifier's batch and every request waiting to join it. The policy charges itself a share of
that delay: pressure = (verifier_active - 1) + verifier_queue (decayed mean, LOAD_DECAY), and
v1_eff = v1 * (1 + LOAD_SHARE * pressure). LOAD_SHARE = 1 would be the full cost to the batch
(maximise the verifier's throughput), 0 a purely selfish request; 0.5 is between. On an idle or
memory-bound verifier v1 is tiny and the term changes nothing; on a saturated, compute-bound
one it pushes k down, to 0 when speculation no longer pays.

Exploration. At k = 0 acceptance is never observed again, so after EXPLORE_EVERY consecutive
k = 0 rounds the policy asks once for PROBE_DEPTH tokens; a predictable stretch of text then
lifts alpha and speculation resumes.

Start. The first round of a request also prefills the prompt on the draft and the verifier, so
its timings are not used (its acceptance is). Until draft and verify times have been measured,
the policy returns ``initial_depth`` (4): the first two rounds run at that depth. All state is in
the object, one per request; the same observations always give the same depths.

Non-goals: learning across requests (a new request starts from the prior); a model of
proposers that return fewer tokens than asked (prompt lookup): such rounds only add less
acceptance evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

from specdec.core.rounds import AHEAD_HIT, Round

DEFAULT_INITIAL_DEPTH = 4
PRIOR_ALPHA = 0.6  # acceptance rate assumed before any round
PRIOR_WEIGHT = 4.0  # pseudo-tokens the prior is worth at the start
ACCEPT_DECAY = 0.9  # per round with proposals: evidence weight ~10 rounds
TIME_DECAY = 0.8  # draft time per token, overhead: ~5 rounds
VERIFY_DECAY = 0.9  # per round, for the mean verify time at each token count
VERIFY_SLOPE_PRIOR = 0.05  # v1 / v0 assumed until the data says otherwise
VERIFY_PRIOR_WEIGHT = 0.02  # the slope prior weighs 1/50 of one observation...
VERIFY_PRIOR_TOKENS = 5.0  # ...of a (k + 1) = 5 token verify
DRAFT_SLOPE_PRIOR = 1.0  # d / c assumed until the data says otherwise (same prior weight)
DRAFT_PRIOR_TOKENS = 1.0  # (a weaker prior than the verify fit: the split is less certain)
LOAD_DECAY = 0.5  # verifier load moves fast: ~2 rounds
LOAD_SHARE = 0.5  # share of the delay imposed on other sequences that this request pays
EXPLORE_EVERY = 16  # rounds at k = 0 between probes
PROBE_DEPTH = 2  # k of a probe round
_TIE = 1e-9  # relative margin a deeper k must win by


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens committed by a round of depth k at per-position acceptance alpha."""
    if alpha >= 1.0 - 1e-12:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


@dataclass(frozen=True)
class CostModel:
    """Predicted wall time of one round, in ns, as a function of k (and of alpha, through
    draft-ahead: a proposal drafted ahead is only ready when every draft was accepted)."""

    draft_ns_per_token: float  # d
    verify_base_ns: float  # v0
    verify_ns_per_token: float  # v1 (v1_eff when built by the policy)
    overhead_ns: float  # o
    ahead_hit_rate: float = 0.0  # H: proposals ready after a fully accepted round
    draft_base_ns: float = 0.0  # c: each call to the draft (a round trip), whatever k
    plain_verify_ns: float | None = None  # P: the verifier's time at k = 0; None: the line's

    def round_ns(self, k: int, alpha: float = 0.0) -> float:
        verify = self.verify_base_ns + self.verify_ns_per_token * (k + 1)
        if k == 0 and self.plain_verify_ns is not None:
            verify = self.plain_verify_ns
        drafting = 0.0
        if k:
            on_demand = self.draft_base_ns + k * self.draft_ns_per_token
            drafting = on_demand * (1.0 - self.ahead_hit_rate * alpha**k)
        return drafting + verify + self.overhead_ns


def best_depth(alpha: float, cost: CostModel, max_depth: int) -> int:
    """argmax over k in [0, max_depth] of E(k) / T(k); ties go to the smaller k."""
    best_k, best_rate = 0, -1.0
    for k in range(max_depth + 1):
        rate = expected_tokens(alpha, k) / max(cost.round_ns(k, alpha), 1.0)
        if rate > best_rate * (1.0 + _TIE):
            best_k, best_rate = k, rate
    return best_k


class _DecayedMean:
    """Mean in which each older sample weighs ``decay`` times less; None before any sample."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.weight = 0.0
        self.value: float | None = None

    def add(self, x: float) -> None:
        self.weight = self.weight * self.decay + 1.0
        prev = x if self.value is None else self.value
        self.value = prev + (x - prev) / self.weight


class _CostFit:
    """y ~ b0 + b1 * x, ridge-regularised towards b1 = rho * b0 (verify time over tokens
    verified; drafting time over tokens drafted)."""

    def __init__(self, rho: float, prior_x: float) -> None:
        self.rho, self.prior_x = rho, prior_x
        self._weight: dict[int, float] = {}  # x -> decayed sample weight
        self._mean: dict[int, float] = {}  # x -> decayed mean y

    def add(self, x: int, y: float) -> None:
        for key in self._weight:
            self._weight[key] *= VERIFY_DECAY
        w = self._weight.get(x, 0.0) + 1.0
        prev = self._mean.get(x, y)
        self._weight[x] = w
        self._mean[x] = prev + (y - prev) / w

    def fit(self) -> tuple[float, float] | None:
        """(b0, b1), or None before any sample."""
        if not self._weight:
            return None
        sw = swx = swxx = swy = swxy = 0.0
        for x, w in self._weight.items():
            y = self._mean[x]
            sw, swx, swxx = sw + w, swx + w * x, swxx + w * x * x
            swy, swxy = swy + w * y, swxy + w * x * y
        # Normal equations of the data plus one prior row (v1 - rho * v0) * X_ref = 0.
        rho, lam = self.rho, VERIFY_PRIOR_WEIGHT * self.prior_x**2
        a00, a01, a11 = sw + lam * rho * rho, swx - lam * rho, swxx + lam
        det = a00 * a11 - a01 * a01  # > 0: the prior row is never parallel to a data row
        v0 = (swy * a11 - swxy * a01) / det
        v1 = (a00 * swxy - a01 * swy) / det
        if v1 < 0.0:  # verify got faster with more tokens: noise; call extra tokens free
            return swy / sw, 0.0
        if v0 < 0.0:  # all cost is per token: fit through the origin
            return 0.0, swxy / swxx
        return v0, v1


class GoodputDepth:
    """Maximises E(k) / T(k) from this request's measured acceptance, timings and load."""

    name: str = "goodput"

    def __init__(self, max_depth: int = 8, *, initial_depth: int | None = None) -> None:
        if max_depth < 0:
            raise ValueError(f"max_depth must be >= 0, got {max_depth}")
        if initial_depth is None:
            initial_depth = min(DEFAULT_INITIAL_DEPTH, max_depth)
        if not 0 <= initial_depth <= max_depth:
            raise ValueError(f"initial_depth must be in [0, {max_depth}], got {initial_depth}")
        self.max_depth = max_depth
        self.initial_depth = initial_depth
        self._successes = PRIOR_ALPHA * PRIOR_WEIGHT
        self._failures = (1.0 - PRIOR_ALPHA) * PRIOR_WEIGHT
        self._draft = _CostFit(DRAFT_SLOPE_PRIOR, DRAFT_PRIOR_TOKENS)
        self._overhead_ns = _DecayedMean(TIME_DECAY)
        self._pressure = _DecayedMean(LOAD_DECAY)
        self._verify = _CostFit(VERIFY_SLOPE_PRIOR, VERIFY_PRIOR_TOKENS)
        self._ahead_hits = _DecayedMean(ACCEPT_DECAY)  # H
        self._plain = _DecayedMean(VERIFY_DECAY)  # P
        self._last_full = False  # the last round accepted every draft
        self._last_drafted = False  # the last round asked for drafts (this one is warm)
        self._rounds = 0  # rounds observed
        self._rounds_at_zero = 0  # consecutive observed rounds with depth 0

    @property
    def alpha(self) -> float:
        """Current estimate of the per-position acceptance rate."""
        return self._successes / (self._successes + self._failures)

    def cost_model(self) -> CostModel | None:
        """The current cost estimate, load penalty included; None until draft and verify times
        have both been measured."""
        fit, drafting = self._verify.fit(), self._draft.fit()
        o, p = self._overhead_ns.value, self._pressure.value
        if fit is None or drafting is None or o is None or p is None:
            return None
        v0, v1 = fit
        c, d = drafting
        hits = self._ahead_hits.value or 0.0
        return CostModel(d, v0, v1 * (1.0 + LOAD_SHARE * p), o, hits, c, self._plain.value)

    def next_depth(self) -> int:
        cost = self.cost_model()
        k = self.initial_depth if cost is None else best_depth(self.alpha, cost, self.max_depth)
        if k == 0 and self._rounds_at_zero >= EXPLORE_EVERY:
            return min(PROBE_DEPTH, self.max_depth)
        return k

    def observe(self, obs: Round) -> None:
        if obs.num_proposed > 0:
            rejected = obs.num_accepted < obs.num_proposed
            self._successes = self._successes * ACCEPT_DECAY + obs.num_accepted
            self._failures = self._failures * ACCEPT_DECAY + (1.0 if rejected else 0.0)
        self._rounds_at_zero = 0 if obs.depth > 0 else self._rounds_at_zero + 1
        self._rounds += 1
        if obs.ahead and self._last_full:
            self._ahead_hits.add(1.0 if obs.ahead == AHEAD_HIT else 0.0)
        self._last_full = obs.full
        warm, self._last_drafted = self._last_drafted, obs.depth > 0
        if self._rounds == 1:  # prompt prefill on both sides: timings unlike any later round
            return
        if obs.depth > 0 and obs.ahead != AHEAD_HIT and warm:
            self._draft.add(obs.depth, obs.draft_ns)
        self._verify.add(obs.num_proposed + 1, obs.verify_ns)
        if obs.depth == 0:
            self._plain.add(obs.verify_ns)
        self._overhead_ns.add(max(obs.round_ns - obs.draft_ns - obs.verify_ns, 0))
        self._pressure.add(max(obs.verifier_active - 1, 0) + obs.verifier_queue)
