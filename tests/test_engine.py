"""The engine against independent batch computations (jiwer / numpy) on the same seeded data."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

import jiwer
import numpy as np
import msgspec
import pytest

from monitor.baselines import Baselines
from monitor.edetector import EDetector
from monitor.engine import Engine
from monitor.replay import replay
from monitor.table import slice_table
from tests.poison import MALFORMED
from tests.conftest import make_config

VOCAB = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
T0 = 1795514400.0


def speech_events(n: int, seed: int) -> tuple[list[dict], dict[str, tuple[dict, str, str]]]:
    """Predictions and feedback with out-of-order arrival, duplicates, early, late and missing feedback."""
    rng = random.Random(seed)
    events, truth = [], {}
    for i in range(n):
        uid = f"u{i}"
        ts = T0 + i * 2.0
        attrs = {"accent": rng.choice(["a1", "a2", "a3"]), "noise": rng.choice(["quiet", "loud"])}
        if rng.random() < 0.1:
            del attrs["noise"]  # missing attribute → "unknown"
        tenant = rng.choice(["t1", "t2"])
        ref = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 12)))
        hyp = " ".join(w if rng.random() > 0.25 else rng.choice(VOCAB) for w in ref.split() if rng.random() > 0.05)
        events.append({"type": "prediction", "id": uid, "ts": ts, "model": "asr", "tenant": tenant,
                       "attributes": attrs, "output": hyp})
        r = rng.random()
        if r < 0.05:
            continue  # never labelled
        delay = rng.choice([rng.uniform(1, 60), rng.uniform(3600, 86400)])  # soon, or hours late
        if r > 0.97:
            delay = -1.5  # feedback stamped before its prediction (clock skew)
        fb = {"type": "feedback", "id": uid, "ts": ts + delay, "label": ref}
        events.append(fb)
        if rng.random() < 0.03:
            events.append(dict(fb, ts=fb["ts"] + 5))  # delivered twice
        truth[uid] = ({"tenant": tenant, **attrs}, hyp, ref)
    rng.shuffle(events)  # files arrive in any order; replay orders by event time
    return events, truth


ASR = dict(metrics={"names": ["wer"]},
           slices={"dimensions": ["tenant", "accent", "noise"],
                   "combinations": [["accent"], ["tenant", "noise"], ["accent", "noise"]], "min_samples": 20},
           join={"ttl": "2d"})


def write(path, events) -> None:
    path.write_bytes(b"\n".join(msgspec.json.encode(e) for e in events) + b"\n")


def test_oracle_wer_per_slice(tmp_path) -> None:
    events, truth = speech_events(3000, seed=11)
    write(tmp_path / "events.jsonl", events)
    engine = Engine(make_config(**ASR))
    replay(engine, [tmp_path / "events.jsonl"], progress=False)
    table = slice_table(engine)
    got = {(json.dumps(r["slice"], sort_keys=True)): r for r in table["slices"]}

    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for attrs, hyp, ref in truth.values():
        full = {"tenant": attrs["tenant"], "accent": attrs["accent"], "noise": attrs.get("noise", "unknown")}
        for combo in ([], ["accent"], ["tenant", "noise"], ["accent", "noise"]):
            groups[json.dumps({d: full[d] for d in combo}, sort_keys=True)].append((ref, hyp))
    assert set(got) == set(groups)
    for key, pairs in groups.items():
        refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
        out = jiwer.process_words(refs, hyps)
        edits = out.substitutions + out.deletions + out.insertions
        words = out.hits + out.substitutions + out.deletions
        row = got[key]
        assert row["n"] == len(pairs), key
        assert row["errors"] == edits and row["units"] == words, key
        assert row["value"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-9), key

    joined = table["pipeline"]["join"]
    assert joined["joined"] == len(truth)
    assert joined["duplicates"]["feedback"] == sum(1 for e in events if e["type"] == "feedback") - len(truth)
    assert joined["pending"] == 3000 - len(truth)


def test_oracle_classifier_rates(tmp_path) -> None:
    rng = np.random.default_rng(5)
    n = 5000
    group = rng.integers(0, 4, n)
    label = rng.random(n) < 0.3
    flip = rng.random(n) < (0.05 + 0.05 * group)
    output = label ^ flip
    events = []
    for i in range(n):
        events.append({"type": "outcome", "id": i, "ts": T0 + i, "model": "clf", "attributes": {"g": f"g{group[i]}"},
                       "output": int(output[i]) if i % 2 else str(int(output[i])), "label": bool(label[i])})
    write(tmp_path / "o.jsonl", events)
    cfg = make_config(metrics={"names": ["error_rate", "fpr", "fnr"], "positive_class": 1},
                      slices={"dimensions": ["g"], "combinations": [["g"]]})
    engine = Engine(cfg)
    replay(engine, [tmp_path / "o.jsonl"], progress=False)
    rows = {(r["slice"].get("g"), r["metric"]): r for r in slice_table(engine)["slices"]}
    for g in [None, 0, 1, 2, 3]:
        sel = np.ones(n, bool) if g is None else group == g
        key = None if g is None else f"g{g}"
        expect = {
            "error_rate": (sel.sum(), (output != label)[sel].sum()),
            "fpr": ((sel & ~label).sum(), (output & ~label)[sel].sum()),
            "fnr": ((sel & label).sum(), (~output & label)[sel].sum()),
        }
        for metric, (units, errors) in expect.items():
            row = rows[(key, metric)]
            assert (row["n"], row["units"], row["errors"]) == (units, units, errors), (g, metric)
            assert row["value"] == pytest.approx(errors / units)


def test_malformed_lines_change_nothing_valid(tmp_path) -> None:
    events, _ = speech_events(2000, seed=3)
    valid = [msgspec.json.encode(e) for e in events]
    write_lines = lambda p, lines: p.write_bytes(b"\n".join(lines) + b"\n")  # noqa: E731
    write_lines(tmp_path / "valid.jsonl", valid)
    rng = random.Random(9)
    mixed = list(valid)
    for k in range(300):
        line = MALFORMED[k % len(MALFORMED)].replace(b'"bad-', f'"bad-{k}-'.encode())  # distinct ids
        mixed.insert(rng.randrange(len(mixed) + 1), line)
    write_lines(tmp_path / "mixed.jsonl", mixed)

    results = []
    for name in ("valid.jsonl", "mixed.jsonl"):
        engine = Engine(make_config(**ASR))
        alerts = replay(engine, [tmp_path / name], progress=False)
        results.append((slice_table(engine), [a.to_dict() for a in alerts], engine))
    (valid_t, valid_a, _), (mixed_t, mixed_a, mixed_engine) = results
    assert mixed_t["slices"] == valid_t["slices"]
    assert mixed_a == valid_a
    assert sum(mixed_t["pipeline"]["invalid"].values()) == 300
    # every line of the corpus is rejected for a specific reason, none as a catch-all
    assert set(mixed_t["pipeline"]["invalid"]) >= {"bad_json", "not_an_object", "bad_type", "missing_id", "bad_id",
                                                   "bad_timestamp", "bad_model", "bad_attributes", "bad_tenant",
                                                   "bad_label", "missing_label", "bad_errors_units", "oversized",
                                                   "unscorable"}


def test_kernel_matches_the_reference_detector() -> None:
    """Alarm and resolution times of the compiled kernel equal the one-stream reference's."""
    p0 = 0.1
    cfg = make_config(slices={"min_samples": 1}, baseline={"source": "file", "file": __file__},
                      drift={"tolerance": 0.0}, disparity={"enabled": False}, alerting={"resolve_fraction": 0.0})
    # baselines are passed directly; the file key only satisfies validation
    engine = Engine(cfg, baselines=Baselines({("*", frozenset(), "error_rate"): p0}))
    rng = np.random.default_rng(1)
    rates = np.concatenate([np.full(3000, 0.1), np.full(2000, 0.3), np.full(6000, 0.05), np.full(3000, 0.25),
                            np.full(4000, 0.05)])
    x = (rng.random(rates.size) < rates).astype(float)
    rows = np.array([[engine.slices.population("m")]] * x.size, dtype=np.int64)
    eu = np.stack([x, np.ones_like(x)], axis=1).reshape(-1, 1, 2)
    alerts = engine.process_scored(rows, eu, T0 + np.arange(x.size, dtype=float))
    got = [(a.state, int(round(a.n))) for a in alerts]

    fire, resolve = EDetector(engine.h_fire), EDetector(engine.h_resolve)
    expect, firing = [], False
    for t, xi in enumerate(x):
        if not firing and fire.update((xi - p0) / p0):
            firing = True
            fire, resolve = EDetector(engine.h_fire), EDetector(engine.h_resolve)
            expect.append(("firing", t + 1))
        elif firing and resolve.update((p0 - xi) / (1 - p0)):
            firing = False
            fire, resolve = EDetector(engine.h_fire), EDetector(engine.h_resolve)
            expect.append(("resolved", t + 1))
    assert len(expect) >= 4, "the scenario should fire and resolve twice"
    assert got == expect


def test_insufficient_data_is_reported_and_never_alerted() -> None:
    cfg = make_config(slices={"dimensions": ["g"], "combinations": [["g"]], "min_samples": 500},
                      baseline={"reference": {"outcomes": 10}, "min_outcomes": 10}, drift={"tolerance": 0.0})
    engine = Engine(cfg)
    rng = np.random.default_rng(2)
    for i in range(400):
        g = "small" if i % 4 == 0 else "big"
        bad = rng.random() < (0.1 if i < 100 or g == "big" else 0.9)
        engine.feed(msgspec.json.encode({"type": "outcome", "id": i, "ts": T0 + i, "model": "m", "attributes": {"g": g},
                                  "output": "x", "label": "y" if bad else "x"}))
    assert engine.flush() == []
    statuses = {r["slice"].get("g"): r["status"] for r in slice_table(engine)["slices"]}
    assert statuses == {None: "insufficient_data", "small": "insufficient_data", "big": "insufficient_data"}


def test_alert_record_contract() -> None:
    cfg = make_config(slices={"dimensions": ["g"], "combinations": [["g"]], "min_samples": 50},
                      baseline={"reference": {"outcomes": 1000}, "min_outcomes": 100})
    engine = Engine(cfg)
    rng = np.random.default_rng(4)
    alerts = []
    for i in range(6000):
        g = f"g{i % 5}"
        p = 0.6 if (g == "g2" and i > 2000) else 0.1
        alerts += engine.feed(msgspec.json.encode({"type": "outcome", "id": i, "ts": T0 + i, "model": "m",
                                            "attributes": {"g": g}, "output": 1, "label": int(rng.random() >= p)}))
    alerts += engine.flush()
    assert alerts
    for a in alerts:
        d = a.to_dict()
        assert {"kind", "state", "model", "slice", "metric", "value", "reference", "n", "ts", "fingerprint"} <= set(d)
        # g2 alone changed; the population contains it (its error doubled), so it may drift too
        allowed = [{"g": "g2"}, {}] if d["kind"] == "drift" else [{"g": "g2"}]
        assert d["slice"] in allowed and d["state"] == "firing" and d["n"] >= 50
        assert d["value"] > d["reference"] and math.isfinite(d["value"])
    assert {a.kind for a in alerts} == {"drift", "disparity"}
    assert len({a.fingerprint for a in alerts}) == len(alerts)


def test_reference_period_by_time_learns_each_slice_its_baseline() -> None:
    cfg = make_config(slices={"dimensions": ["g"], "combinations": [["g"]], "min_samples": 50},
                      baseline={"reference": {"start": T0, "end": T0 + 1000}, "margin_sigmas": 0.0, "min_outcomes": 100},
                      drift={"tolerance": 0.05}, disparity={"enabled": False})
    engine = Engine(cfg)
    rng = np.random.default_rng(3)
    alerts = []
    for i in range(4000):
        g = "a" if i % 2 else "b"
        p = 0.1 if g == "a" else 0.3
        if g == "a" and i > 2500:
            p = 0.4  # a drifts after the reference period
        alerts += engine.feed(msgspec.json.encode({"type": "outcome", "id": i, "ts": T0 + i, "model": "m",
                                                   "attributes": {"g": g}, "output": 0, "label": int(rng.random() < p)}))
    alerts += engine.flush()
    rows = {r["slice"].get("g"): r for r in slice_table(engine)["slices"]}
    assert rows["a"]["baseline"] == pytest.approx(0.1, abs=0.04) and rows["b"]["baseline"] == pytest.approx(0.3, abs=0.06)
    # a's rate quadrupled, so the population (half of it a) rose 15 points too; b never drifts
    assert sorted((tuple(a.slice.items()), a.state) for a in alerts if a.kind == "drift") == [
        ((), "firing"), ((("g", "a"),), "firing")]


def test_no_baseline_means_no_drift_and_no_drift_budget() -> None:
    from monitor.engine import detectors_per_outcome

    cfg = make_config(slices={"dimensions": ["g"], "combinations": [["g"]]}, baseline={"source": "none"})
    assert detectors_per_outcome(cfg) == 1  # only the disparity detector of [g]
    engine = Engine(cfg)
    engine.feed(msgspec.json.encode({"type": "outcome", "id": 1, "ts": T0, "model": "m", "output": 0, "label": 1}))
    engine.flush()
    assert all(r["baseline"] is None for r in slice_table(engine)["slices"])


def test_per_model_overrides() -> None:
    cfg = make_config(slices={"min_samples": 10}, baseline={"reference": {"outcomes": 2000}},
                      models={"strict": {"drift": {"tolerance": 0.01}}, "quiet": {"drift": {"enabled": False}}})
    engine = Engine(cfg)
    rng = np.random.default_rng(8)
    alerts = []
    for i in range(6000):
        for model in ("strict", "quiet"):
            p = 0.1 if i < 3000 else 0.2  # the same change for both models
            alerts += engine.feed(msgspec.json.encode({"type": "outcome", "id": f"{model}-{i}", "ts": T0 + i,
                                                       "model": model, "output": 0, "label": int(rng.random() < p)}))
    alerts += engine.flush()
    assert {a.model for a in alerts if a.kind == "drift"} == {"strict"}


def test_bad_baseline_file_is_reported_with_paths(tmp_path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    (tmp_path / "b.yaml").write_text("baselines:\n  - slice: {accent: scottish}\n    value: -0.1\n  - valu: 0.2\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "config" / "asr.yaml").read_text().replace("source: reference", "source: file\n  file: b.yaml"))
    run = subprocess.run([sys.executable, "-m", "monitor", "check-config", str(cfg)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "baselines[0].value" in run.stderr and "baselines[1].valu" in run.stderr


def test_the_engine_starts_without_waiting_for_numba() -> None:
    """Importing the engine, the CLI and the state layout never imports numba: the compiled
    kernel loads in a background thread (monitor.compiled) while the first events are processed,
    and without numba's scipy BLAS probe."""
    import subprocess
    import sys

    code = ("import sys; import monitor.cli, monitor.engine, monitor.table, monitor.rows; "
            "assert 'numba' not in sys.modules, 'numba imported'; "
            "from monitor.compiled import kernel; kernel(); "
            "assert 'numba' in sys.modules and 'scipy.linalg' not in sys.modules, 'scipy.linalg probed'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_memory_per_tracked_slice_is_within_a_kilobyte() -> None:
    """Index, estimates and detectors of 10,000 slices (asr.yaml, one metric), by tracemalloc."""
    from monitor.bench import memory_per_slice
    from monitor.demo import builtin_config

    per_slice, slices = memory_per_slice(builtin_config(), 10_000)
    assert slices >= 10_000 and per_slice <= 1024, per_slice
