"""Seeded simulations of the statistical claims stated in the README (tolerances stated per test)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from monitor.kernel import F
from monitor.baselines import Baselines
from monitor.edetector import OracleCusum
from monitor.engine import Engine, detectors_per_outcome
from tests.conftest import make_config
from tests.sim import grid_routes, run_stream

GRID = {"dimensions": ["a", "b"], "combinations": [["a"], ["b"], ["a", "b"]], "min_samples": 200}
HETERO = 0.08 + 0.004 * (np.arange(100) // 10) + 0.004 * (np.arange(100) % 10)  # 0.08 … 0.152, stationary


class Everywhere(Baselines):
    """The provider's tested rate, the same for every slice."""

    def __init__(self, rate: float):
        super().__init__({})
        self.rate = rate

    def lookup(self, model: str, slice_: dict[str, str], metric: str) -> float | None:
        return self.rate


def boundary_engine(p: float, metric: str = "error_rate", **alerting) -> Engine:
    """Drift and disparity with zero tolerance and a baseline equal to the truth: the hardest null."""
    cfg = make_config(slices={**GRID, "min_samples": 1},
                      metrics={"names": [metric], "max_units_per_outcome": 30 if metric == "wer" else 1},
                      baseline={"source": "file", "file": __file__, "fallback_to_reference": False},
                      drift={"tolerance": 0.0}, disparity={"tolerance": 0.0}, alerting=alerting)
    return Engine(cfg, baselines=Everywhere(p))


@pytest.mark.slow
def test_null_stream_default_config_many_slices() -> None:
    """121 slices, 10^6 outcomes, learned baselines: the guarantee allows 1 expected false alert."""
    engine = Engine(make_config(slices=GRID))
    routes = grid_routes(engine, 10, 10)
    alerts = run_stream(engine, routes, 1_000_000, seed=1, rate=lambda c, t: HETERO[c])
    assert len(engine.slices) == 121
    # E[false alerts] ≤ 1; even if it were exactly 1, P(≥ 4) < 2%
    assert sum(a.state == "firing" for a in alerts) <= 3


@pytest.mark.slow
@pytest.mark.parametrize("metric, kappa", [("error_rate", None), ("wer", 0.5)])
def test_null_at_the_boundary_stays_within_the_budget(metric: str, kappa: float | None) -> None:
    """Truth exactly at the alert boundary (tolerance 0), budget raised so the bound is not vacuous.

    For WER the words of an utterance are strongly correlated (Beta κ=0.5: many utterances are
    almost all right or almost all wrong), which a word-level test would mistake for drift.
    """
    per_million = 20_000.0
    engine = boundary_engine(0.12, metric, false_alarms_per_million=per_million)
    routes = grid_routes(engine, 10, 10)
    n = 1_000_000
    alerts = run_stream(engine, routes, n, seed=2, rate=lambda c, t: np.full(c.shape, 0.12),
                        words=(3, 30) if metric == "wer" else None, kappa=kappa)
    firing = sum(a.state == "firing" for a in alerts)
    bound = per_million * n / 1e6
    assert firing <= bound, (firing, bound)


def _first_drift(alerts, slice_):
    return next((a for a in alerts if a.kind == "drift" and a.state == "firing" and a.slice == slice_), None)


@pytest.mark.slow
@pytest.mark.parametrize("p1", [0.15, 0.2, 0.3])
def test_detection_delay_within_twice_the_oracle_cusum(p1: float) -> None:
    """Mean delay (outcomes of the changed slice) ≤ 2 × the CUSUM that knows p0 and p1, same ARL."""
    p0, seeds = 0.1, 8
    delays = []
    for seed in range(seeds):
        engine = boundary_engine(p0)
        routes = grid_routes(engine, 10, 10)
        run_stream(engine, routes, 60_000, seed, lambda c, t: np.full(c.shape, p0))
        sid = engine.slices._ids[next(k for k in engine.slices.keys if k.combo == 1 and k.values == ("a3",))]
        n_change = engine.st[sid, F.N]
        alerts = run_stream(engine, routes, 300_000, seed + 100, lambda c, t: np.where(c // 10 == 3, p1, p0))
        first = _first_drift(alerts, {"a": "a3"})
        assert first is not None
        delays.append(first.n - n_change)
    arl = math.exp(engine.h_fire)
    rng = np.random.default_rng(7)
    oracle = []
    for _ in range(200):
        cusum, t = OracleCusum(p0, p1, arl), 0
        while not cusum.update(rng.random() < p1):
            t += 1
        oracle.append(t + 1)
    ratio = float(np.mean(delays) / np.mean(oracle))
    assert ratio <= 2.0, (np.mean(delays), np.mean(oracle))


@pytest.mark.slow
def test_change_in_one_group_alerts_only_slices_containing_it_and_resolves() -> None:
    engine = Engine(make_config(slices=GRID))
    routes = grid_routes(engine, 10, 10)
    bad = lambda c, t: np.where((c // 10 == 3) & (t >= 300_000) & (t < 700_000), HETERO[c] + 0.12, HETERO[c])  # noqa
    alerts = run_stream(engine, routes, 1_200_000, seed=5, rate=bad)
    firing = [a for a in alerts if a.state == "firing"]
    assert firing, "the change must be detected"
    for a in firing:
        assert a.slice.get("a") == "a3", a.summary  # every alerted slice contains the changed group
    assert {(a.kind, tuple(a.slice.items())) for a in firing} >= {("drift", (("a", "a3"),)),
                                                                   ("disparity", (("a", "a3"),))}
    # every alert fired once and resolved after the change went away (no flapping); a firing alert
    # may be re-issued, still firing, when the cause it was grouped under resolves first
    states: dict[str, list[str]] = {}
    for a in alerts:
        seq = states.setdefault(a.fingerprint, [])
        if not seq or seq[-1] != a.state:
            seq.append(a.state)
    assert all(seq in (["firing"], ["firing", "resolved"]) for seq in states.values()), states
    main = [a for a in alerts if a.slice == {"a": "a3"}]
    assert [a.state for a in main if a.kind == "drift"] == ["firing", "resolved"]
    assert not engine.active or all(a.slice.get("a") == "a3" for a in engine.active.values())


@pytest.mark.slow
def test_model_wide_shift_is_drift_not_disparity() -> None:
    engine = Engine(make_config(slices=GRID))
    routes = grid_routes(engine, 10, 10)
    alerts = run_stream(engine, routes, 600_000, seed=8,
                        rate=lambda c, t: np.where(t >= 200_000, HETERO[c] + 0.1, HETERO[c]))
    kinds = Counter(a.kind for a in alerts if a.state == "firing")
    assert kinds["drift"] >= 10 and kinds["disparity"] == 0


def test_budget_accounts_for_every_detector_an_outcome_touches() -> None:
    cfg = make_config(slices=GRID, metrics={"names": ["error_rate", "fpr", "fnr"], "positive_class": 1})
    assert detectors_per_outcome(cfg) == 4 * 3 + 3 * 3
    engine = Engine(cfg)
    # 21 declared increments, plus 2 × 3 for each pinned bias-bounty group, which shares 1/16 of its part
    assert engine.h_fire == pytest.approx(math.log(27e6)) and engine.h_pinned == pytest.approx(math.log(27e6 * 16))
    unpinned = make_config(slices=GRID, metrics={"names": ["error_rate", "fpr", "fnr"], "positive_class": 1},
                           submissions={"pin": False})
    assert Engine(unpinned).h_fire == pytest.approx(math.log(21e6))
