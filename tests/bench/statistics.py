"""Statistical figures for the README: false alerts on null streams, detection delay vs oracles.

    python -m tests.bench.statistics [--seeds 20]

Seeded; prints one line per figure. The tests in tests/test_statistics.py assert the same
claims with fewer seeds; this script measures them more thoroughly.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from monitor.kernel import F
from monitor.edetector import OracleCusum, bernoulli_kl
from monitor.engine import Engine
from tests.conftest import make_config
from tests.sim import grid_routes, run_stream
from tests.test_statistics import GRID, HETERO, Everywhere, boundary_engine


def null_default() -> str:
    engine = Engine(make_config(slices=GRID))
    routes = grid_routes(engine, 10, 10)
    t0 = time.perf_counter()
    alerts = run_stream(engine, routes, 1_000_000, seed=1, rate=lambda c, t: HETERO[c])
    firing = sum(a.state == "firing" for a in alerts)
    return (f"null, default config, {len(engine.slices)} slices, 10^6 outcomes: {firing} false alerts "
            f"(guarantee: ≤ 1 expected) [{time.perf_counter() - t0:.1f}s]")


def null_boundary(metric: str, kappa: float | None) -> str:
    per_million = 20_000.0
    engine = boundary_engine(0.12, metric, false_alarms_per_million=per_million)
    routes = grid_routes(engine, 10, 10)
    alerts = run_stream(engine, routes, 1_000_000, seed=2, rate=lambda c, t: np.full(c.shape, 0.12),
                        words=(3, 30) if metric == "wer" else None, kappa=kappa)
    kinds = {k: sum(a.state == "firing" and a.kind == k for a in alerts) for k in ("drift", "disparity")}
    label = f"{metric}" + (f", Beta κ={kappa}" if kappa else "")
    return f"null at the boundary ({label}), F=20000/10^6, 10^6 outcomes: {kinds} (bound 20000)"


def _delay(engine: Engine, routes: np.ndarray, seed: int, p0: float, p1: float, words, kappa) -> float:
    run_stream(engine, routes, 50_000, seed, lambda c, t: np.full(c.shape, p0), words=words, kappa=kappa)
    sid = engine.slices._ids[next(k for k in engine.slices.keys if k.combo == 1 and k.values == ("a3",))]
    n0 = engine.st[sid, F.N]
    alerts = run_stream(engine, routes, 400_000, seed + 1000, lambda c, t: np.where(c // 10 == 3, p1, p0),
                        words=words, kappa=kappa)
    first = next((a for a in alerts if a.kind == "drift" and a.slice == {"a": "a3"}), None)
    return first.n - n0 if first else math.inf


def delay_bernoulli(p1: float, seeds: int) -> str:
    p0 = 0.1
    delays = []
    for seed in range(seeds):
        engine = boundary_engine(p0)
        delays.append(_delay(engine, grid_routes(engine, 10, 10), seed, p0, p1, None, None))
    h = engine.h_fire
    rng = np.random.default_rng(7)
    oracle = []
    for _ in range(400):
        cusum, t = OracleCusum(p0, p1, math.exp(h)), 1
        while not cusum.update(rng.random() < p1):
            t += 1
        oracle.append(t)
    return (f"delay error_rate {p0}→{p1}: ours {np.mean(delays):.0f} outcomes, oracle CUSUM {np.mean(oracle):.0f} "
            f"(theory {h / bernoulli_kl(p1, p0):.0f}), ratio {np.mean(delays) / np.mean(oracle):.2f}")


def delay_wer(p1: float, umax: int, seeds: int) -> str:
    p0 = 0.12
    delays = []
    for seed in range(seeds):
        cfg = make_config(slices=GRID, metrics={"names": ["wer"], "max_units_per_outcome": umax},
                          baseline={"source": "file", "file": __file__, "fallback_to_reference": False},
                          drift={"tolerance": 0.0}, disparity={"tolerance": 0.0})
        engine = Engine(cfg, baselines=Everywhere(p0))
        delays.append(_delay(engine, grid_routes(engine, 10, 10), seed, p0, p1, (4, 25), None))
    h = engine.h_fire
    rng = np.random.default_rng(5)
    up, down = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    oracle = []
    for _ in range(400):
        s, t = 0.0, 0
        while s < h:
            t += 1
            u = rng.integers(4, 26)
            x = rng.binomial(u, p1)
            s = max(0.0, s + x * up + (u - x) * down)
        oracle.append(t)
    return (f"delay WER {p0}→{p1} (4–25 words, U={umax}): ours {np.mean(delays):.0f} utterances, binomial-oracle "
            f"CUSUM {np.mean(oracle):.0f}, ratio {np.mean(delays) / np.mean(oracle):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    print(null_default(), flush=True)
    print(null_boundary("error_rate", None), flush=True)
    print(null_boundary("wer", 0.5), flush=True)
    for p1 in (0.13, 0.15, 0.2, 0.3, 0.5):
        print(delay_bernoulli(p1, args.seeds), flush=True)
    for p1 in (0.15, 0.2, 0.3):
        for umax in (25, 40):
            print(delay_wer(p1, umax, max(args.seeds // 2, 4)), flush=True)


if __name__ == "__main__":
    main()
