"""Figures for the bias-bounty statistics (:mod:`monitor.bounty_stats`).

    python -m tests.bench.bounty_stats [--fdr-seeds 30] [--power-runs 200] [--pending 0 20 200]

Seeded; prints one line per figure. tests/test_bounty_stats.py asserts the same claims with fewer
seeds.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from monitor.bounty_stats import gamma_sequence
from tests.test_bounty_stats import (
    ALPHA,
    MIN_GAP,
    _disparity_null_rate,
    crossing_rate,
    drift_increments,
    fixed_sample_n,
    outcome_errors,
    power_delays,
    simulate_bounty,
    square_wave,
    utterance_units,
)


def nulls(runs: int) -> None:
    rng = np.random.default_rng(1)
    b = 0.10
    e = (rng.random((runs, 5000)) < b + MIN_GAP).astype(np.float64)
    a, w, m = drift_increments(e.ravel(), np.ones(e.size), b)
    print(f"drift null, Bernoulli at boundary, 5000 outcomes: P(sup e >= 20) = "
          f"{crossing_rate(((a - MIN_GAP * w) / ((b + MIN_GAP) * m)).reshape(e.shape)):.4f}")
    u = utterance_units(rng, (runs, 2000))
    e = outcome_errors(rng, np.full(u.shape, b + MIN_GAP), u, kappa=0.5)
    a, w, m = drift_increments(e.ravel(), u.ravel(), b, max_units=25)
    print(f"drift null, WER 3-30 words Beta(k=0.5), 2000 utterances: "
          f"{crossing_rate(((a - MIN_GAP * w) / ((b + MIN_GAP) * m)).reshape(u.shape)):.4f}")
    cases = [
        ("disparity null, constant 0.10, share 0.2, 10k outcomes", dict(n=10_000, share=0.2,
                                                                       common_fn=lambda t: np.full(t.shape, 0.10))),
        ("disparity null, WER Beta(k=0.5), share 0.3, 4k", dict(n=4_000, share=0.3, wer=True, kappa=0.5,
                                                              common_fn=lambda t: np.full(t.shape, 0.12))),
        ("disparity null, square wave 0.05/0.25 every 2k, share 0.1, 16k", dict(n=16_000, share=0.1,
                                                                               common_fn=square_wave)),
        ("disparity null, ramp + cycle, share 0.1, 16k", dict(
            n=16_000, share=0.1, common_fn=lambda t: 0.08 + 0.12 * t / t[-1] + 0.05 * np.sin(2 * np.pi * t / 3000))),
        ("disparity null, square wave, share 0.02, 50k", dict(n=50_000, share=0.02, common_fn=square_wave)),
        ("NAIVE plug-in (negative control), ramp 0.05->0.20, 8k", dict(
            n=8_000, share=0.1, naive=True, common_fn=lambda t: 0.05 + 0.15 * t / t[-1])),
    ]
    for i, (name, kw) in enumerate(cases):
        t0 = time.perf_counter()
        rate = _disparity_null_rate(10 + i, runs=runs, **kw)  # type: ignore[arg-type]
        print(f"{name}: {rate:.4f}  ({runs} runs, {time.perf_counter() - t0:.1f}s)")


def fdr(seeds: int) -> None:
    for min_gap in (0.0, MIN_GAP):
        for gamma in ("jm", "log2"):
            t0 = time.perf_counter()
            rs = [simulate_bounty(1000 + s, gamma=gamma, min_gap=min_gap) for s in range(seeds)]
            fdp = np.array([r.fdp for r in rs])
            print(f"e-LOND gamma={gamma} min_gap={min_gap}: mean FDP {fdp.mean():.4f} (max {fdp.max():.3f}), "
                  f"false {sum(r.false for r in rs)}, true {sum(r.true for r in rs)}/{sum(r.true_total for r in rs)}, "
                  f"nulls {sum(r.null_total for r in rs)}, adversary past z {np.mean([r.adversarial_past_z for r in rs]):.2f} "
                  f"gap {np.mean([r.adversarial_past_gap for r in rs]):.3f}; unadjusted (each at α) mean FDP "
                  f"{np.mean([r.unadjusted_fdp for r in rs]):.3f}  ({seeds} seeds, {time.perf_counter() - t0:.0f}s)")


def power(runs: int) -> None:
    level_100 = ALPHA * gamma_sequence("jm")(100)
    for alpha, label in ((ALPHA, "α=0.05 (single claim)"), (level_100, f"α_100={level_100:.2e} (100th submission, jm, D=0)")):
        for share in (0.02, 0.10):
            for gap in (0.05, 0.10):
                d = power_delays(77, share, gap, runs, alpha=alpha, max_group=20_000)
                ok = d[d > 0]
                n80 = fixed_sample_n(0.10 + gap, 0.10, share, MIN_GAP, alpha, 0.8)
                n90 = fixed_sample_n(0.10 + gap, 0.10, share, MIN_GAP, alpha, 0.9)
                q = np.percentile(ok, [50, 80, 90]) if ok.size else [math.nan] * 3
                print(f"power {label} share {share:.2f} gap +{gap:.2f}: confirmed {ok.size}/{runs}; group outcomes "
                      f"median {q[0]:.0f}, p80 {q[1]:.0f}, p90 {q[2]:.0f} | fixed-sample z-test n80 {n80:.0f}, n90 {n90:.0f}")


def engine_cost(pending: list[int], outcomes: int = 100_000, wide: bool = False) -> None:
    """What pending submissions cost the engine: lines/s with 0, 20, 200 hypotheses under test
    (distinct groups over the declared dimensions, none decided within the run)."""
    import msgspec

    from monitor.config import load_config
    from monitor.engine import Engine
    from monitor.simulate import SpeechScenario
    from tests.conftest import ROOT

    lines = list(SpeechScenario(outcomes=outcomes, seed=11, malformed=0.0).events())
    t0 = msgspec.json.decode(lines[0])["ts"]
    cfg = load_config(ROOT / "config" / "asr.yaml")
    rng = np.random.default_rng(3)
    tenants = ["northwind-bank", "acme-callcenter", "city-courts", "radio-kilo"]  # (no gap between them)
    devices = ["headset", "handset-a"]
    for k in pending:
        subs = []
        for i in range(k):  # groups of about 5% (wide: 50%) of the traffic
            group = {"all": [{"dim": "tenant", "in": sorted(set(rng.choice(tenants, 2).tolist()))},
                             {"dim": "noise", "not_in": [f"n{i}"]}]} if wide else \
                {"all": [{"dim": "tenant", "eq": str(rng.choice(tenants))}, {"dim": "device", "in": devices[:2]},
                         {"dim": "noise", "not_in": [f"n{i}"]}]}
            subs.append(msgspec.json.encode({"type": "submission", "id": f"s{i}", "ts": t0, "model": "asr-en",
                                             "submitter": "bench", "group": group,
                                             "claim": {"kind": "disparity", "metric": "wer", "min_gap": 0.002},
                                             "budget": {"max_outcomes": 10**7, "deadline": "300d"}}))
        engine = Engine(cfg)
        started = time.perf_counter()
        engine.feed_many(subs + lines)
        engine.drain()
        took = time.perf_counter() - started
        print(f"engine with {k} {'wide ' if wide else ''}submissions under test: {len(lines) / took:,.0f} lines/s "
              f"({engine.bounty.counts()}, {len(lines):,} lines)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pending", type=int, nargs="*", default=[])
    ap.add_argument("--null-runs", type=int, default=2000)
    ap.add_argument("--fdr-seeds", type=int, default=30)
    ap.add_argument("--power-runs", type=int, default=200)
    args = ap.parse_args()
    if args.pending:
        engine_cost(args.pending)
        engine_cost(args.pending[:2], wide=True)
        return
    nulls(args.null_runs)
    power(args.power_runs)
    fdr(args.fdr_seeds)


if __name__ == "__main__":
    main()
