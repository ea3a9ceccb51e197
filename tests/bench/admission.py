"""Admission by frequency: a flood of junk values first, then a real new condition.

``python -m tests.bench.admission`` prints the README's figures; ``tests/test_admission.py``
asserts the same claims. The stream (error rate, seeded):

1. a reference period of normal traffic: accents ``a0..a4`` × noise ``quiet``/``loud``;
2. ``junk`` outcomes, each with a distinct noise value (a producer writing ids into the field);
3. normal traffic again, where a new noise value ``ward-c`` carries 20% of the outcomes at an
   error rate of 0.25 against 0.10 everywhere else.

``ward-c`` arrives long after ``max_values_per_dimension`` filled with junk: it must still be
tracked (inheriting its baseline, being new) and alerted on, while memory and the number of
Prometheus series stay within the caps.
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry

from monitor.alerts import Alert
from monitor.engine import Engine
from monitor.exposition import SliceCollector
from monitor.table import slice_table
from tests.conftest import make_config

T0 = 1795514400.0
NEW = "ward-c"
CONFIG = dict(
    metrics={"names": ["error_rate"]},
    slices={"dimensions": ["accent", "noise"], "combinations": [["accent"], ["noise"], ["accent", "noise"]],
            "max_values_per_dimension": 50, "max_slices": 2000, "min_samples": 200},
    baseline={"reference": {"outcomes": 20_000}, "min_outcomes": 1000},
)


@dataclass
class Result:
    junk: int
    seconds: float
    tracked: bool  # ward-c has a slice of its own
    alert: Alert | None  # the first drift alert on noise=ward-c
    provenance: dict  # ward-c's table row
    retired: int  # noise values retired to make room
    overflow: int  # outcomes whose noise value was mapped to __other__
    slices: int  # tracked slices at the end
    ids: int  # slice ids (rows) ever allocated: the memory bound
    series: int  # Prometheus samples exported for the engine
    candidates: int  # values held by the noise dimension's Space-Saving summary
    peak_rss_mb: float


def _run(engine: Engine, accents: np.ndarray, noises: list[str], bad: np.ndarray, t0: float) -> list[Alert]:
    route = engine.slices.route
    rows = np.array([route("m", None, {"accent": f"a{a}", "noise": n}) for a, n in zip(accents, noises)],
                    dtype=np.int64)
    eu = np.stack([bad.astype(float), np.ones(bad.size)], axis=1).reshape(-1, 1, 2)
    return engine.process_scored(rows, eu, t0 + np.arange(bad.size, dtype=float))


def junk_then_new(junk: int = 1_000_000, after: int = 200_000, seed: int = 1, chunk: int = 50_000) -> Result:
    rng = np.random.default_rng(seed)
    engine = Engine(make_config(**CONFIG))
    alerts: list[Alert] = []
    started = time.perf_counter()
    t = T0
    phases = [(20_000, "normal"), (junk, "junk"), (after, "new")]
    for total, phase in phases:
        for lo in range(0, total, chunk):
            n = min(chunk, total - lo)
            accents = rng.integers(0, 5, n)
            if phase == "junk":
                noises = [f"junk-{seed}-{lo + i}" for i in range(n)]
                p = np.full(n, 0.10)
            else:
                noises = list(np.where(rng.random(n) < 0.5, "quiet", "loud"))
                p = np.full(n, 0.10)
                if phase == "new":
                    new = rng.random(n) < 0.2
                    noises = [NEW if w else x for w, x in zip(new, noises)]
                    p[new] = 0.25
            alerts += _run(engine, accents, noises, rng.random(n) < p, t)
            t += n
    seconds = time.perf_counter() - started
    table = slice_table(engine)
    collector = SliceCollector()
    collector.publish(table)
    registry = CollectorRegistry()
    registry.register(collector)
    series = sum(len(m.samples) for m in registry.collect())
    ward = [r for r in table["slices"] if r["slice"] == {"noise": NEW}]
    noise_dim = engine.slices.dimensions.index("noise")
    first = next((a for a in alerts if a.kind == "drift" and a.state == "firing" and a.slice == {"noise": NEW}), None)
    return Result(junk, seconds, bool(ward), first, ward[0] if ward else {}, engine.slices.retired["noise"],
                  engine.slices.value_overflow["noise"], len(engine.slices.live()), len(engine.slices), series,
                  len(engine.slices._admission[("m", noise_dim)].candidates),
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--junk", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    r = junk_then_new(args.junk, seed=args.seed)
    print(f"{r.junk:,} distinct junk noise values, then {NEW} at 20% of traffic (error rate 0.25 vs 0.10): "
          f"{r.seconds:.1f} s")
    print(f"  {NEW} tracked: {r.tracked}; baseline {r.provenance.get('baseline')} "
          f"({r.provenance.get('baseline_source')} from {r.provenance.get('baseline_from')}), new={r.provenance.get('new')}")
    if r.alert is not None:
        print(f"  first drift alert on {NEW}: n={r.alert.n} — {r.alert.summary}")
    else:
        print(f"  no drift alert on {NEW}")
    print(f"  noise values retired {r.retired:,}; outcomes mapped to __other__ {r.overflow:,}")
    print(f"  slices tracked {r.slices} (ids allocated {r.ids}, cap {CONFIG['slices']['max_slices']}); "
          f"Prometheus samples {r.series:,}; Space-Saving counters {r.candidates:,}")
    print(f"  peak RSS {r.peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
