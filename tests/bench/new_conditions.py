"""New conditions, the last mile: seeded speech streams through the engine with ``config/asr.yaml``.

``python -m tests.bench.new_conditions`` prints the figures the README records;
``tests/test_new_conditions.py`` asserts the same claims on fewer seeds.

* **The article's case.** From part-way through the stream, 30% of one customer's traffic runs
  in a noise condition nobody tested (``ward-b``), about 5 WER points worse, far worse for two
  accents. The first page is compared with two CUSUMs run on the same utterances of the new
  condition at the same threshold: one that knows the new rate and tests it against the
  config's boundary (true baseline + drift tolerance), and one that knows both true rates.
* **The null.** Accents with stationary but different rates (two far worse than the rest), a
  new customer and a new device appearing part-way with everyone else's distribution: no drift
  alert, disparity alerts only on slices of a worse accent.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from monitor.alerts import Alert
from monitor.config import Config, load_config
from monitor.engine import Engine
from tests.conftest import ROOT

T0 = 1795514400.0
RATE = 4.0  # utterances per second of event time
MODEL = "asr-en"
ACCENTS = {"general-american": 0.09, "southern-us": 0.10, "philadelphia": 0.105, "scottish": 0.125, "irish": 0.10,
           "indian-english": 0.12, "nigerian-english": 0.13, "spanish-l1": 0.125, "mandarin-l1": 0.13, "arabic-l1": 0.13}
TENANTS = {"st-marys": 0.25, "northwind-bank": 0.25, "acme-callcenter": 0.2, "city-courts": 0.15, "radio-kilo": 0.15}
DEVICES = {"handset-a": 1.0, "handset-b": 1.06, "headset": 0.96}
NOISES = {"quiet": (0.6, 1.0), "office": (0.3, 1.05), "street": (0.1, 1.1)}
INCIDENT = ("st-marys", "ward-b", 0.3)  # customer, new noise value, share of the customer's traffic
INCIDENT_EXTRA = {"scottish": 0.12, "nigerian-english": 0.12}  # WER added in the new condition, by accent
INCIDENT_EXTRA_DEFAULT = 0.03  # about +5 points on average: 0.12 → 0.17
KAPPA = 12.0  # Beta concentration of per-utterance rates: the words of an utterance are correlated


def asr_config() -> Config:
    return load_config(ROOT / "config" / "asr.yaml")


@dataclass
class Stream:
    """Cells (tenant, accent, device, noise) and one outcome per row: cell, errors, words, true rate."""

    cells: list[tuple[str, str, str, str]]
    cell: np.ndarray
    errors: np.ndarray
    words: np.ndarray
    truth: np.ndarray
    ts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.ts = T0 + np.arange(len(self.cell)) / RATE

    def feed(self, engine: Engine, chunk: int = 50_000) -> list[Alert]:
        routes = np.array([engine.slices.route(MODEL, t, {"accent": a, "device": d, "noise": n})
                           for t, a, d, n in self.cells], dtype=np.int64)
        alerts: list[Alert] = []
        for s in range(0, len(self.cell), chunk):
            sl = slice(s, s + chunk)
            eu = np.stack([self.errors[sl], self.words[sl]], axis=1).reshape(-1, 1, 2)
            alerts += engine.process_scored(routes[self.cell[sl]], eu, self.ts[sl])
        return alerts


def speech_stream(n: int, seed: int, accents: dict[str, float], tenants: dict[str, float],
                  devices: dict[str, float], rate, kappa: float = KAPPA) -> Stream:
    """``rate(t_idx, a_idx, d_idx, n_idx, i) -> true WER``; index arrays into the given tables."""
    rng = np.random.default_rng(seed)
    tn, an, dn, nn = list(tenants), list(accents), list(devices), list(NOISES) + [INCIDENT[1]]
    tp = np.array(list(tenants.values()))
    t_idx = rng.choice(len(tn), n, p=tp / tp.sum())
    a_idx = rng.integers(0, len(an), n)
    d_idx = rng.integers(0, len(dn), n)
    n_idx = rng.choice(3, n, p=[p for p, _ in NOISES.values()])
    i = np.arange(n)
    truth = np.clip(rate(t_idx, a_idx, d_idx, n_idx, i, rng), 0.001, 0.9)
    words = rng.integers(4, 26, n).astype(float)
    q = rng.beta(truth * kappa, (1 - truth) * kappa)
    errors = rng.binomial(words.astype(np.int64), q).astype(float)
    cells = [(t, a, d, x) for t in tn for a in an for d in dn for x in nn]
    cell = ((t_idx * len(an) + a_idx) * len(dn) + d_idx) * len(nn) + n_idx
    return Stream(cells, cell, errors, words, truth)


def base_rate(a_idx: np.ndarray, d_idx: np.ndarray, n_idx: np.ndarray, accents: dict[str, float],
              devices: dict[str, float] = DEVICES) -> np.ndarray:
    acc = np.array(list(accents.values()))[a_idx]
    dev = np.array(list(devices.values()))[d_idx]
    noise = np.array([m for _, m in NOISES.values()])[np.minimum(n_idx, 2)]
    return acc * dev * noise


# ---- the article's case -------------------------------------------------------------------------
def article_stream(n: int, seed: int, onset: float = 0.6) -> tuple[Stream, np.ndarray]:
    """The stream and a mask of the outcomes in the new condition."""
    tenant = list(TENANTS).index(INCIDENT[0])
    extra = np.array([INCIDENT_EXTRA.get(a, INCIDENT_EXTRA_DEFAULT) for a in ACCENTS])
    mask_holder: list[np.ndarray] = []

    def rate(t_idx, a_idx, d_idx, n_idx, i, rng):
        new = (i >= int(n * onset)) & (t_idx == tenant) & (rng.random(len(i)) < INCIDENT[2])
        n_idx[new] = 3  # the new noise value
        mask_holder.append(new)
        p = base_rate(a_idx, d_idx, n_idx, ACCENTS)
        return np.where(new, np.array(list(ACCENTS.values()))[a_idx] + extra[a_idx], p)

    stream = speech_stream(n, seed, ACCENTS, TENANTS, DEVICES, rate)
    return stream, mask_holder[0]


_lgamma = np.vectorize(math.lgamma, otypes=[float])


def _lbeta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _lgamma(a) + _lgamma(b) - _lgamma(a + b)


def llr(errors: np.ndarray, words: np.ndarray, p0: float, p1: float, kappa: float | None) -> np.ndarray:
    """Per-utterance log-likelihood ratio of rate p1 against p0: beta-binomial with the true
    concentration (the optimal test for this stream), or binomial (words independent) without."""
    if kappa is None:
        return errors * math.log(p1 / p0) + (words - errors) * math.log((1 - p1) / (1 - p0))

    def logp(p: float) -> np.ndarray:
        a, b = p * kappa, (1 - p) * kappa
        return _lbeta(errors + a, words - errors + b) - _lbeta(np.array(a), np.array(b))

    return logp(p1) - logp(p0)


def cusum_delay(increments: np.ndarray, h: float) -> int | None:
    """Outcomes until the CUSUM of these log-likelihood ratios reaches h."""
    s = 0.0
    for k, x in enumerate(increments, 1):
        s = max(0.0, s + x)
        if s >= h:
            return k
    return None


def _index(alert: Alert) -> int:
    return int(round((datetime.fromisoformat(alert.ts).timestamp() - T0) * RATE))


@dataclass
class ArticleResult:
    onset_hours: float
    first_page: Alert | None
    delay_utterances: int | None  # utterances in the new condition up to the first page
    delay_hours: float | None
    oracle_boundary: int | None  # the CUSUM knowing the new rate, against true baseline + tolerance
    oracle_both: int | None  # the CUSUM knowing both true rates
    binomial_boundary: int | None  # the first, assuming independent words (faster than possible here)
    p0: float
    p1: float
    alerts: list[Alert]
    overlapping_only: bool
    none_before: bool


def article_case(n: int = 600_000, seed: int = 1, onset: float = 0.6) -> ArticleResult:
    cfg = asr_config()
    engine = Engine(cfg)
    stream, new = article_stream(n, seed, onset)
    alerts = stream.feed(engine)
    start = int(n * onset)
    truth, words = stream.truth, stream.words
    p0 = float((truth[:start] * words[:start]).sum() / words[:start].sum())  # the true baseline
    p1 = float((truth[new] * words[new]).sum() / words[new].sum())
    boundary = p0 + max(cfg.drift.tolerance, cfg.drift.relative_tolerance * p0)
    e_new, w_new = stream.errors[new], words[new]
    oracle_boundary = cusum_delay(llr(e_new, w_new, boundary, p1, KAPPA), engine.h_fire)
    oracle_both = cusum_delay(llr(e_new, w_new, p0, p1, KAPPA), engine.h_fire)
    binomial = cusum_delay(llr(e_new, w_new, boundary, p1, None), engine.h_fire)
    pages = [a for a in alerts if a.state == "firing" and a.explained_by is None]
    first = pages[0] if pages else None
    cum_new = np.cumsum(new)
    delay = int(cum_new[_index(first)]) if first is not None else None
    hours = (_index(first) - start) / RATE / 3600 if first is not None else None

    def overlaps(a: Alert) -> bool:
        return a.slice.get("tenant", INCIDENT[0]) == INCIDENT[0] and a.slice.get("noise", INCIDENT[1]) == INCIDENT[1]

    return ArticleResult(start / RATE / 3600, first, delay, hours, oracle_boundary, oracle_both, binomial, p0, p1, alerts,
                         all(overlaps(a) for a in alerts), all(_index(a) >= start for a in alerts))


# ---- the null -----------------------------------------------------------------------------------
NULL_ACCENTS = {**ACCENTS, "scottish": 0.25, "nigerian-english": 0.26}  # two far worse, stationary
WORSE = ("scottish", "nigerian-english")


def null_stream(n: int, seed: int, customer_from: float = 0.4, device_from: float = 0.5) -> Stream:
    """A new customer and a new device appear part-way, with everyone else's distribution."""
    tenants = {**TENANTS, "new-clinic": 0.2}
    devices = {**DEVICES, "handset-c": 1.0}

    def rate(t_idx, a_idx, d_idx, n_idx, i, rng):
        for idx, late, start in ((t_idx, len(tenants) - 1, customer_from), (d_idx, len(devices) - 1, device_from)):
            early = (i < int(n * start)) & (idx == late)  # not there yet: those outcomes go to the others
            idx[early] = rng.integers(0, late, int(early.sum()))
        return base_rate(a_idx, d_idx, n_idx, NULL_ACCENTS, devices)

    return speech_stream(n, seed, NULL_ACCENTS, tenants, devices, rate)


@dataclass
class NullResult:
    drift: list[Alert]
    disparity: list[Alert]
    disparity_outside_worse: list[Alert]
    worse_alerted: set[str]
    inherited_late: int  # slices of the new customer/device holding an inherited baseline


def null_case(n: int = 1_000_000, seed: int = 2) -> NullResult:
    engine = Engine(asr_config())
    alerts = null_stream(n, seed).feed(engine)
    firing = [a for a in alerts if a.state == "firing"]
    drift = [a for a in firing if a.kind == "drift"]
    disparity = [a for a in firing if a.kind == "disparity"]
    outside = [a for a in disparity if a.slice.get("accent") not in WORSE]
    worse = {a.slice["accent"] for a in disparity if list(a.slice) == ["accent"]}
    late = sum(1 for sid in engine.slices.live() if {"new-clinic", "handset-c"} & set(engine.slices.describe(sid).values())
               and engine.provenance(sid, 0).source == "inherited")
    return NullResult(drift, disparity, outside, worse, late)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outcomes", type=int, default=600_000)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    print(f"the article's case: {args.outcomes:,} utterances at {RATE:g}/s, onset at 60%, config/asr.yaml")
    ratios, both, hours = [], [], []
    for seed in range(1, args.seeds + 1):
        started = time.perf_counter()
        r = article_case(args.outcomes, seed)
        assert r.first_page is not None and r.delay_utterances and r.oracle_boundary and r.oracle_both
        ratios.append(r.delay_utterances / r.oracle_boundary)
        both.append(r.delay_utterances / r.oracle_both)
        hours.append(r.delay_hours)
        print(f"  seed {seed}: true WER {r.p0:.3f} → {r.p1:.3f} in the new condition; first page after "
              f"{r.delay_utterances:,} of its utterances ({r.delay_hours:.2f} h of event time): {r.first_page.summary}\n"
              f"          CUSUM knowing the new rate vs the boundary: {r.oracle_boundary:,} → ratio {ratios[-1]:.2f}; "
              f"knowing both rates: {r.oracle_both:,} → ratio {both[-1]:.2f}; binomial (independent words) against "
              f"the boundary: {r.binomial_boundary}; alerts {len(r.alerts)}, all on "
              f"overlapping slices: {r.overlapping_only}, none before onset: {r.none_before} "
              f"({time.perf_counter() - started:.1f}s)")
    print(f"  mean ratio {np.mean(ratios):.2f} (max {max(ratios):.2f}) to the CUSUM against the boundary, "
          f"{np.mean(both):.2f} to the one knowing both rates; {np.mean(hours):.2f} h of event time on average")
    r0 = null_case()
    print(f"null, 10^6 utterances, accents {', '.join(WORSE)} far worse, a new customer (from 40%) and device "
          f"(from 50%): {len(r0.drift)} drift alerts, {len(r0.disparity)} disparity alerts, "
          f"{len(r0.disparity_outside_worse)} outside a worse accent's slices; worse accents alerted: "
          f"{sorted(r0.worse_alerted)}; {r0.inherited_late} late-born slices held to inherited baselines")


if __name__ == "__main__":
    main()
