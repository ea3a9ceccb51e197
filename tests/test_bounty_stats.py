"""Seeded simulations for :mod:`monitor.bounty_stats` (bias-bounty claims).

Every claim here is a measured frequency with a stated Monte-Carlo tolerance, and each test has a
negative control or a margin that a wrong implementation would break. Larger runs and the figures
quoted in the report: ``python -m tests.bench.bounty_stats``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from monitor.bounty_stats import (
    LAMBDAS,
    DisparityClaim,
    DriftClaim,
    ELond,
    EProcess,
    GapCS,
    decide,
    disparity_increments,
    drift_increments,
    gamma_sequence,
    log_e_paths,
)

ALPHA = 0.05
MIN_GAP = 0.02


def mc_tol(p: float, runs: int) -> float:
    """3 Monte-Carlo standard errors of a frequency p over `runs` runs."""
    return 3.0 * math.sqrt(p * (1 - p) / runs)


# ------------------------------------------------------------------ simulators (shared with the bench)


def outcome_errors(rng: np.random.Generator, rate: np.ndarray, units: np.ndarray, kappa: float | None) -> np.ndarray:
    """Errors per outcome with E[e | u] = rate·u; kappa: per-outcome rate ~ Beta(mean rate, κ) (overdispersion)."""
    p = np.clip(rate, 1e-6, 1 - 1e-6)
    if kappa is not None:
        p = rng.beta(p * kappa, (1 - p) * kappa)
    return rng.binomial(units.astype(np.int64), p).astype(np.float64)


def utterance_units(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """WER-like reference lengths, 3–30 words (a few above U = 25)."""
    return rng.integers(3, 31, size=shape).astype(np.float64)


@dataclass
class Stream:
    errors: np.ndarray
    units: np.ndarray
    in_group: np.ndarray


def model_stream(rng: np.random.Generator, n: int, share: float, common: np.ndarray, group_excess: float,
                 wer: bool = False, kappa: float | None = None) -> Stream:
    """One model's traffic: membership Bernoulli(share); rate = common(t) (+ group_excess in the group)."""
    g = rng.random(n) < share
    u = utterance_units(rng, (n,)) if wer else np.ones(n)
    rate = common + group_excess * g
    return Stream(outcome_errors(rng, rate, u, kappa), u, g)


def disparity_z(s: Stream, gap: float, cap: float = 1.0, max_units: float = 1.0) -> np.ndarray:
    a, w, m = disparity_increments(s.errors, s.units, s.in_group, cap=cap, max_units=max_units)
    return (a - gap * w) / ((cap + gap) * m)


def pad(rows: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(r.size for r in rows)))
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out


def crossing_rate(z: np.ndarray, alpha: float = ALPHA) -> float:
    """Share of runs (rows) whose mixture e-process ever reaches 1/alpha."""
    return float(np.mean(log_e_paths(z).max(axis=1) >= math.log(1 / alpha)))


def first_crossing(z: np.ndarray, log_threshold: float) -> np.ndarray:
    """Index of the first increment at which each row's e-process reaches the threshold (-1: never)."""
    hit = log_e_paths(z) >= log_threshold
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


# ------------------------------------------------------------------ (1) one null e-process, 2,000 runs


RUNS = 2000


def test_drift_null_at_the_boundary_bernoulli_and_overdispersed_wer():
    rng = np.random.default_rng(101)
    b = 0.10
    # Bernoulli errors, true rate exactly b + gap
    e = (rng.random((RUNS, 3000)) < b + MIN_GAP).astype(np.float64)
    a, w, m = drift_increments(e.ravel(), np.ones(e.size), b)
    z = ((a - MIN_GAP * w) / ((b + MIN_GAP) * m)).reshape(e.shape)
    bern = crossing_rate(z)
    # WER: 3–30 words, U = 25, per-utterance rate Beta(κ = 0.5) with mean b + gap (words strongly correlated)
    u = utterance_units(rng, (RUNS, 1500))
    e = outcome_errors(rng, np.full(u.shape, b + MIN_GAP), u, kappa=0.5)
    a, w, m = drift_increments(e.ravel(), u.ravel(), b, cap=1.0, max_units=25)
    z = ((a - MIN_GAP * w) / ((b + MIN_GAP) * m)).reshape(u.shape)
    wer = crossing_rate(z)
    # negative control: the same harness with a baseline 0.01 too low (truth 0.01 above the claim) must fail
    e = (rng.random((RUNS, 3000)) < b + MIN_GAP + 0.01).astype(np.float64)
    a, w, m = drift_increments(e.ravel(), np.ones(e.size), b)
    control = crossing_rate(((a - MIN_GAP * w) / ((b + MIN_GAP) * m)).reshape(e.shape))
    tol = mc_tol(ALPHA, RUNS)
    assert bern <= ALPHA + tol, bern
    assert wer <= ALPHA + tol, wer
    assert control > ALPHA + tol, control


def _disparity_null_rate(seed: int, n: int, share: float, common_fn, wer: bool = False, kappa: float | None = None,
                         runs: int = RUNS, naive: bool = False) -> float:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    rows = []
    for _ in range(runs):
        s = model_stream(rng, n, share, common_fn(t), MIN_GAP, wer=wer, kappa=kappa)
        if naive:  # WRONG on purpose: complement rate from all complement outcomes since the submission
            g = s.in_group
            ce, cu = np.cumsum(np.where(g, 0, s.errors)), np.cumsum(np.where(g, 0, s.units))
            idx = np.flatnonzero(g & (cu > 0))
            r = ce[idx] / cu[idx]
            rows.append((s.errors[idx] - (r + MIN_GAP) * s.units[idx]) / (1 + MIN_GAP))
        else:
            rows.append(disparity_z(s, MIN_GAP, cap=1.0, max_units=25.0 if wer else 1.0))
    return crossing_rate(pad(rows))


def square_wave(t: np.ndarray) -> np.ndarray:
    """Model-wide rate alternating 0.05 / 0.25 every 2,000 outcomes (an incident every 4,000)."""
    return np.where((t // 2000) % 2 == 0, 0.05, 0.25)


def test_disparity_null_at_the_boundary_constant_and_overdispersed():
    tol = mc_tol(ALPHA, RUNS)
    constant = _disparity_null_rate(202, 10_000, 0.2, lambda t: np.full(t.shape, 0.10))
    wer = _disparity_null_rate(203, 4_000, 0.3, lambda t: np.full(t.shape, 0.12), wer=True, kappa=0.5)
    assert constant <= ALPHA + tol, constant
    assert wer <= ALPHA + tol, wer


def test_disparity_null_stays_valid_when_the_common_rate_moves():
    tol = mc_tol(ALPHA, RUNS)
    steps = _disparity_null_rate(204, 16_000, 0.1, square_wave)
    ramp_cycle = _disparity_null_rate(
        205, 16_000, 0.1, lambda t: 0.08 + 0.12 * t / t[-1] + 0.05 * np.sin(2 * np.pi * t / 3000))
    # negative control: the naive plug-in (complement rate since the submission) under a rising rate
    naive = _disparity_null_rate(206, 8_000, 0.1, lambda t: 0.05 + 0.15 * t / t[-1], runs=500, naive=True)
    assert steps <= ALPHA + tol, steps
    assert ramp_cycle <= ALPHA + tol, ramp_cycle
    assert naive > 0.5, naive


def test_confidence_sequence_covers_the_gap_at_all_times():
    rng = np.random.default_rng(303)
    runs, n, share, gap_true = 150, 3000, 0.25, 0.05
    miss = 0
    for _ in range(runs):
        s = model_stream(rng, n, share, np.full(n, 0.1), gap_true)
        a, w, m = disparity_increments(s.errors, s.units, s.in_group)
        cs = GapCS(-1.0, 1.0, step=0.01)
        # feed in pieces and check the running interval after each (coverage must hold at all times)
        for piece in np.array_split(np.arange(a.size), 6):
            cs.update(a[piece], w[piece], m[piece])
            lo, hi = cs.interval(0.1)
            if not lo < gap_true < hi:
                miss += 1
                break
    assert miss / runs <= 0.1 + mc_tol(0.1, runs), miss
    assert hi - lo < 0.2  # and it is informative: ~750 group outcomes pin the gap down to ±0.1


# ------------------------------------------------------------------ (2) e-LOND over 600 submissions


@dataclass
class FdrRun:
    fdp: float
    false: int
    true: int
    true_total: int
    null_total: int
    adversarial_past_gap: float
    adversarial_past_z: float
    unadjusted_fdp: float


def simulate_bounty(seed: int, n_subs: int = 600, window: int = 30_000, past: int = 20_000,
                    gamma: str = "jm", min_gap: float = 0.0) -> FdrRun:
    """One model, 100 cells (1 % of traffic each): 8 bad cells at rate 0.25, 20 good ones at 0.04 and 72
    null cells at 0.10 — the rest of the traffic of a null group is at 0.10 too, so nulls sit at the
    boundary when min_gap = 0 (the default here: the hardest case for FDR).

    Submissions arrive evenly; each is tested on the next `window` outcomes of the shared stream.
    A third are null unions of 2–10 cells at random, a third the worst-looking null unions on the
    last `past` outcomes (largest z-score of the past gap among 1,000 candidate unions and the 72 null
    single cells: selected retrospectively, tested prospectively), the rest null single cells; one
    submission in ten is instead a union of 2–4 bad cells and 0–2 null cells. Null status is computed
    from the true rates (gap <= min_gap). Also counts what testing each claim at α without e-LOND
    would have rejected (the negative control)."""
    rng = np.random.default_rng(seed)
    k, bad = 100, np.arange(8)
    rates = np.full(k, 0.10)
    rates[bad] = 0.25
    rates[8:28] = 0.04
    total = past + n_subs * 50 + window
    cells = rng.integers(0, k, size=total)
    errors = (rng.random(total) < rates[cells]).astype(np.float64)
    units = np.ones(total)
    starts = past + 50 * np.arange(n_subs)
    null_cells = np.arange(28, k)
    candidates = np.zeros((1000 + null_cells.size, k), dtype=bool)
    for i in range(1000):
        candidates[i, rng.choice(null_cells, size=rng.integers(2, 11), replace=False)] = True
    candidates[1000 + np.arange(null_cells.size), null_cells] = True
    fdr = ELond(alpha=ALPHA, gamma=gamma)
    confirmed_at: list[float] = []  # confirmation time (outcome index) per submission, inf if never
    crossing: list[float] = []  # the e-process' log value when it crossed
    is_null: list[bool] = []
    adv_gaps: list[float] = []
    adv_z: list[float] = []
    unadjusted: list[bool] = []
    for j, s0 in enumerate(starts):
        kind = j % 3
        member = np.zeros(k, dtype=bool)
        if rng.random() < 0.1:  # a real problem: a bad cell, alone or with a few null cells
            member[rng.choice(bad, size=rng.integers(2, 5), replace=False)] = True
            member[rng.choice(null_cells, size=rng.integers(0, 3), replace=False)] = True
        elif kind == 0:
            member = candidates[rng.integers(1000)].copy()
        elif kind == 1:  # adversary: worst-looking candidate on the past window
            pc = cells[s0 - past:s0]
            pe = errors[s0 - past:s0]
            ce = np.bincount(pc, weights=pe, minlength=k)
            cn = np.bincount(pc, minlength=k).astype(np.float64)
            ge, gn = candidates @ ce, candidates @ cn
            rg, rr = ge / gn, (ce.sum() - ge) / (cn.sum() - gn)
            zs = (rg - rr) / np.sqrt(rg * (1 - rg) / gn + 1e-12)
            best = int(np.argmax(zs))
            member = candidates[best].copy()
            adv_gaps.append(float(rg[best] - rr[best]))
            adv_z.append(float(zs[best]))
        else:
            member[rng.choice(null_cells)] = True
        is_null.append(bool(rates[member].mean() - rates[~member].mean() <= min_gap + 1e-9))
        # discoveries made strictly before this submission arrives, in the order they were made
        for i in sorted(range(j), key=lambda i: confirmed_at[i]):
            if confirmed_at[i] < s0:
                fdr.confirm(str(i), crossing[i])
        level = fdr.register(str(j))
        sl = slice(s0, s0 + window)
        g = member[cells[sl]]
        a, w, m = disparity_increments(errors[sl], units[sl], g)
        z = (a - min_gap * w) / ((1 + min_gap) * m)
        path = log_e_paths(z) if z.size else np.zeros(0)
        unadjusted.append(bool(path.size and path.max() >= math.log(1 / ALPHA)))
        hit = np.flatnonzero(path >= math.log(1 / level))
        if hit.size == 0:
            confirmed_at.append(math.inf)
            crossing.append(-math.inf)
        else:  # the block that crossed closed at its closing group outcome
            pos = np.flatnonzero(g)
            cu = np.cumsum(~g)[pos]
            closes = pos[cu > np.concatenate(([0], cu[:-1]))]
            confirmed_at.append(float(s0 + closes[hit[0]]))
            crossing.append(float(path[hit[0]]))
    rejected = np.isfinite(np.asarray(confirmed_at))
    nulls = np.asarray(is_null)
    false, true = int(np.sum(rejected & nulls)), int(np.sum(rejected & ~nulls))
    raw = np.asarray(unadjusted)
    raw_false, raw_true = int(np.sum(raw & nulls)), int(np.sum(raw & ~nulls))
    return FdrRun(false / max(false + true, 1), false, true, int(np.sum(~nulls)), int(np.sum(nulls)),
                  float(np.mean(adv_gaps)), float(np.mean(adv_z)), raw_false / max(raw_false + raw_true, 1))


def test_elond_controls_fdr_with_adversarially_chosen_nulls():
    results = [simulate_bounty(seed) for seed in range(400, 406)]
    mean_fdp = float(np.mean([r.fdp for r in results]))
    assert all(r.null_total >= 500 for r in results)
    # the adversary really picks groups that look bad in the past (a retrospective test would flag them)
    assert np.mean([r.adversarial_past_z for r in results]) > 2.5
    # FDR <= α (6 seeds, ~600 submissions each; tolerance 0.05 for the sampling error of a mean FDP)
    assert mean_fdp <= ALPHA + 0.05, mean_fdp
    assert sum(r.true for r in results) >= 0.5 * sum(r.true_total for r in results)  # FDR is not vacuous
    # negative control: the same e-processes each at α, without e-LOND, do not control the FDR
    assert np.mean([r.unadjusted_fdp for r in results]) > ALPHA


def test_elond_bookkeeping():
    fdr = ELond(alpha=0.1, gamma="p2")
    l1 = fdr.register("a")
    assert l1 == pytest.approx(0.1 * 6 / math.pi ** 2)
    assert not fdr.confirm("a", log_e=math.log(1 / l1) - 1e-9)
    l2 = fdr.register("b")  # before any discovery: no boost
    assert l2 == pytest.approx(0.1 * 6 / (math.pi ** 2 * 4))
    assert fdr.confirm("a", log_e=math.log(1 / l1))
    l3 = fdr.register("c")  # after one discovery: boosted ×2
    assert l3 == pytest.approx(2 * 0.1 * 6 / (math.pi ** 2 * 9))
    assert fdr.level("b") == l2  # levels are fixed at registration
    for name in ("jm", "log2"):
        g = gamma_sequence(name)
        t = np.arange(1, 200_001)
        assert sum(g(int(x)) for x in t[:1000]) + 0 < 1
        assert all(g(int(x)) > 0 for x in (1, 10, 10**6))


# ------------------------------------------------------------------ (3) power and delay


def fixed_sample_n(p_group: float, p_rest: float, share: float, gap: float, alpha: float, power: float) -> float:
    """Group outcomes a one-sided two-sample z-test of 'gap <= min_gap' needs (complement n = n·(1-share)/share)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    var = p_group * (1 - p_group) + p_rest * (1 - p_rest) * share / (1 - share)
    return z * z * var / (p_group - p_rest - gap) ** 2


def power_delays(seed: int, share: float, gap_true: float, runs: int, alpha: float = ALPHA,
                 max_group: int = 6000) -> np.ndarray:
    """Group outcomes until confirmation at level alpha, per run (-1: not within max_group)."""
    rng = np.random.default_rng(seed)
    n = int(max_group / share)
    rows, counts = [], []
    for _ in range(runs):
        s = model_stream(rng, n, share, np.full(n, 0.10), gap_true)
        a, w, m = disparity_increments(s.errors, s.units, s.in_group)
        rows.append((a - MIN_GAP * w) / ((1 + MIN_GAP) * m))
        counts.append(np.cumsum(w))  # group outcomes up to each block (units = 1)
    z = pad(rows)
    hit = first_crossing(z, math.log(1 / alpha))
    return np.asarray([c[h] if h >= 0 else -1 for c, h in zip(counts, hit)])


@pytest.mark.parametrize("share,gap_true", [(0.02, 0.05), (0.02, 0.10), (0.10, 0.05), (0.10, 0.10)])
def test_true_gaps_are_confirmed(share: float, gap_true: float):
    delays = power_delays(500 + int(share * 100) + int(gap_true * 100), share, gap_true, runs=20)
    assert np.all(delays > 0), delays  # every run confirmed within 6,000 group outcomes
    n80 = fixed_sample_n(0.10 + gap_true, 0.10, share, MIN_GAP, ALPHA, 0.8)
    # the anytime-valid test's median delay is within a small factor of the fixed-sample n (80 % power)
    assert np.median(delays) < 3.0 * n80, (np.median(delays), n80)


# ------------------------------------------------------------------ decisions


def test_decide_statuses():
    b = 0.10
    rng = np.random.default_rng(9)
    worse = DriftClaim(b, MIN_GAP, cs_step=0.005)
    worse.observe((rng.random(3000) < 0.2).astype(float))
    v = decide(worse, level=0.01, n=worse.n, budget_max_outcomes=5000, deadline_passed=False, min_gap=MIN_GAP,
               min_outcomes_for_testability=100)
    assert v.status == "confirmed" and v.interval is not None and v.interval[0] > MIN_GAP
    fine = DriftClaim(b, MIN_GAP, cs_step=0.005)
    fine.observe((rng.random(3000) < 0.09).astype(float))
    v = decide(fine, 0.01, fine.n, 5000, False, MIN_GAP, 100)
    assert v.status == "refuted" and v.interval is not None and v.interval[1] < MIN_GAP
    borderline = DriftClaim(b, MIN_GAP, cs_step=0.005)
    borderline.observe((rng.random(200) < 0.125).astype(float))
    assert decide(borderline, 0.01, borderline.n, 5000, False, MIN_GAP, 100).status == "pending"
    v = decide(borderline, 0.01, borderline.n, 200, False, MIN_GAP, 100)
    assert v.status == "not_confirmed" and v.interval is not None and v.interval[0] < MIN_GAP < v.interval[1]
    assert decide(borderline, 0.01, borderline.n, 5000, True, MIN_GAP, 500).status == "untestable"
    bare = EProcess()
    v = decide(bare, 0.01, 0, 10, True, MIN_GAP, 0)
    assert v.status == "not_confirmed" and v.interval is None


def test_increments_respect_their_bounds():
    rng = np.random.default_rng(11)
    s = model_stream(rng, 20_000, 0.6, np.full(20_000, 0.4), 0.3, wer=True, kappa=0.3)
    s.errors[::7] *= 3  # insertions beyond cap·units get capped
    for gap in (0.0, 0.02, 0.3):
        assert disparity_z(s, gap, cap=1.5, max_units=10).min() >= -1
    a, w, m = drift_increments(s.errors, s.units, 0.3, cap=1.5, max_units=10)
    assert ((a - 0.02 * w) / (0.32 * m)).min() >= -1
    with pytest.raises(ValueError):
        EProcess().update([-1.5])


# ------------------------------------------------------------------ (4) state()/restore()


def test_state_restore_round_trip_continues_identically():
    rng = np.random.default_rng(12)
    s = model_stream(rng, 6000, 0.3, np.full(6000, 0.1), 0.06, wer=True, kappa=2.0)
    whole = DisparityClaim(MIN_GAP, max_units=25, cs_step=0.01)
    whole.observe(s.errors, s.units, s.in_group)
    part = DisparityClaim(MIN_GAP, max_units=25, cs_step=0.01)
    cut = 2999  # mid-block: the carry must survive
    part.observe(s.errors[:cut], s.units[:cut], s.in_group[:cut])
    part = DisparityClaim.restore(json.loads(json.dumps(part.state())))
    for piece in np.array_split(np.arange(cut, 6000), 3):
        part.observe(s.errors[piece], s.units[piece], s.in_group[piece])
    assert part.blocks == whole.blocks and part.n == whole.n
    assert part.log_e == pytest.approx(whole.log_e, abs=1e-9)
    assert part.log_e_max == pytest.approx(whole.log_e_max, abs=1e-9)
    assert part.interval(0.05) == whole.interval(0.05)

    d_whole = DriftClaim(0.1, MIN_GAP, max_units=25, cs_step=0.01)
    d_whole.observe(s.errors, s.units)
    d_part = DriftClaim(0.1, MIN_GAP, max_units=25, cs_step=0.01)
    d_part.observe(s.errors[:cut], s.units[:cut])
    d_part = DriftClaim.restore(json.loads(json.dumps(d_part.state())))
    d_part.observe(s.errors[cut:], s.units[cut:])
    assert d_part.log_e == pytest.approx(d_whole.log_e, abs=1e-9)
    assert d_part.interval(0.05) == d_whole.interval(0.05)

    ep = EProcess()
    ep.update([0.3, -0.2])
    ep2 = EProcess.restore(json.loads(json.dumps(ep.state())))
    ep.update([0.5])
    ep2.update(0.5)
    assert ep2.log_e == ep.log_e and ep2.log_e_max == ep.log_e_max and ep2.n == 3

    fdr = ELond()
    fdr.register("x")
    fdr.confirm("x", 50.0)
    fdr2 = ELond.restore(json.loads(json.dumps(fdr.state())))
    assert fdr2.register("y") == fdr.register("y")


def test_claim_matches_the_vectorised_path_and_batches_do_not_matter():
    rng = np.random.default_rng(13)
    s = model_stream(rng, 5000, 0.15, np.full(5000, 0.1), 0.05)
    one = DisparityClaim(MIN_GAP, cs_step=None)
    for i in range(0, 5000, 37):
        one.observe(s.errors[i:i + 37], s.units[i:i + 37], s.in_group[i:i + 37])
    z = disparity_z(s, MIN_GAP)
    assert one.log_e == pytest.approx(float(log_e_paths(z)[-1]), abs=1e-9)
    assert one.log_e_max == pytest.approx(max(0.0, float(log_e_paths(z).max())), abs=1e-9)
    assert len(LAMBDAS) == 10
