"""Admission of dimension values by frequency: bounded, deterministic, checkpointed, and a late
frequent condition is tracked however full the cap was."""

from __future__ import annotations

import random
from collections import Counter

import msgspec
import numpy as np

from monitor.admission import SpaceSaving
from monitor.checkpoint import CheckpointStore
from monitor.config import SlicesConfig
from monitor.engine import Engine
from monitor.exposition import SERIES_PER_ROW
from monitor.slices import OTHER, SliceIndex
from monitor.table import slice_table
from tests.bench.admission import CONFIG, junk_then_new
from tests.conftest import make_config

T0 = 1795514400.0


def test_space_saving_keeps_its_guarantee_on_a_skewed_stream() -> None:
    """Every value more frequent than total/capacity is held, and count − error ≤ true ≤ count."""
    rng = np.random.default_rng(3)
    stream = [f"v{x}" for x in rng.zipf(1.3, 200_000)]
    sketch = SpaceSaving(100)
    for v in stream:
        sketch.add(v)
    true = Counter(stream)
    held = {v: (c, err) for v, c, err, _ in sketch.state()["entries"]}
    assert len(held) == 100
    assert {v for v, c in true.items() if c > len(stream) / 100} <= set(held)
    for v, (c, err) in held.items():
        assert c - err <= true[v] <= c, v


def _index(**admission) -> SliceIndex:
    return SliceIndex(SlicesConfig(dimensions=["a"], combinations=[["a"]], max_values_per_dimension=3,
                                   admission={"candidates": 10, "min_count": 20, "half_life": 400, **admission}))


def test_a_value_frequent_after_the_cap_filled_takes_the_place_of_one_that_faded() -> None:
    idx = _index()
    for i in range(1300):  # p, q, r fill the cap; p and q fade away (counts halve every 400 outcomes)
        idx.route("m", None, {"a": "pqr"[i % 3] if i < 300 else "r"})
    assert idx.describe(idx.route("m", None, {"a": "late"})[1]) == {"a": OTHER}
    got = [idx.describe(idx.route("m", None, {"a": "late"})[1]) for _ in range(40)]
    assert got[-1] == {"a": "late"} and got[0] == {"a": OTHER}  # admitted once frequent enough
    assert idx.retired["a"] == 1 and idx.find("m", 1, ("p",)) == -1  # the weakest (p, then q by name) retired
    assert idx.find("m", 1, ("q",)) >= 0 and idx.find("m", 1, ("r",)) >= 0
    # junk that never repeats never takes a place
    for i in range(5000):
        idx.route("m", None, {"a": f"junk{i}"})
        idx.route("m", None, {"a": "r"})
    assert idx.retired["a"] == 1


def test_a_value_whose_slice_is_firing_is_never_retired() -> None:
    idx = _index()
    for i in range(90):
        idx.route("m", None, {"a": "pqr"[i % 3]})
    firing = idx.find("m", 1, ("p",))
    idx.busy = lambda sid: sid == firing
    for _ in range(100):
        idx.route("m", None, {"a": "late"})
    assert idx.find("m", 1, ("late",)) >= 0 and idx.find("m", 1, ("p",)) == firing
    assert idx.find("m", 1, ("q",)) == -1  # the weakest value that is not busy gave its place


def test_retired_ids_are_reused_only_after_the_engine_ran_their_outcomes() -> None:
    idx = _index()
    for i in range(30):
        idx.route("m", None, {"a": "pqr"[i % 3]})
    p = idx.find("m", 1, ("p",))
    for _ in range(40):
        idx.route("m", None, {"a": "late"})
    assert idx.find("m", 1, ("p",)) == -1
    idx.route("m", None, {"a": "later"})  # (stays __other__: not frequent)
    assert p not in idx.live() and [sid for sid, _ in idx.settle()] == [p]
    for _ in range(60):
        idx.route("m", None, {"a": "third"})
    assert idx.find("m", 1, ("third",)) == p and idx.take_reused() == [p]


def _lines(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        phase = i * 4 // n
        a = rng.choice(["p", "q", "r"]) if phase == 0 else rng.choice(["r", f"new{phase}", f"junk{i}"])
        out.append(msgspec.json.encode({"type": "outcome", "id": i, "ts": T0 + i, "model": "m", "attributes": {"a": a},
                                        "output": 0, "label": int(rng.random() < (0.3 if a.startswith("new") else 0.1))}))
    return out


def _with_restarts(cfg, lines: list[bytes], cuts: tuple[int, ...], tmp_path) -> tuple[list, Engine]:
    """Feed ``lines`` in pieces ending at ``cuts``, checkpointing after each and continuing in a
    new engine restored from it (a new process); returns the alerts and the last engine."""
    store = CheckpointStore(tmp_path)
    current, got, start = Engine(cfg), [], 0
    for cut in cuts:
        got += current.feed_many(lines[start:cut]) + current.flush()
        store.save({"e": {0: cut}}, *current.state())
        ckpt = store.latest()
        current = Engine(cfg)
        current.restore(ckpt.data, ckpt.arrays, ckpt.earlier)
        start = cut
    return got, current


def test_a_checkpoint_restores_the_same_admission_decisions(tmp_path) -> None:
    """Retirements, recycled ids and candidates' counts are plain data in the checkpoint: an
    interrupted run equals one that never stopped."""
    cfg = make_config(slices={"dimensions": ["a"], "combinations": [["a"]], "max_values_per_dimension": 3,
                              "min_samples": 50, "admission": {"candidates": 10, "min_count": 20, "half_life": 400}},
                      baseline={"reference": {"outcomes": 2000}, "min_outcomes": 100})
    lines = _lines(12_000, seed=2)
    whole = Engine(cfg)
    expected = whole.feed_many(lines) + whole.flush()
    assert whole.slices.retired["a"] >= 2 and any(a.kind == "drift" for a in expected)
    got, current = _with_restarts(cfg, lines, (3001, 6007, 9011, len(lines)), tmp_path)
    assert [a.to_dict() for a in got] == [a.to_dict() for a in expected]
    assert slice_table(current) == slice_table(whole)
    assert current.slices.state() == whole.slices.state()


def test_a_new_condition_after_a_million_junk_values_is_tracked_and_alerted() -> None:
    """10^6 distinct junk noise values first, then ward-c at 20% of traffic with a higher error
    rate: ward-c is tracked (new, inheriting its baseline) and alerted; slices, Space-Saving
    counters and Prometheus series stay within their caps."""
    r = junk_then_new(1_000_000)
    print(f"junk 10^6: {r.seconds:.1f} s, peak RSS {r.peak_rss_mb:.0f} MB, {r.series} Prometheus samples, "
          f"{r.slices} slices ({r.ids} ids), {r.candidates} candidates")
    assert r.tracked and r.provenance["new"] and r.provenance["baseline_source"] == "inherited"
    assert r.alert is not None and r.alert.baseline_source == "inherited" and "new condition" in r.alert.summary
    assert r.retired >= 1 and r.overflow >= 999_000
    caps = CONFIG["slices"]
    assert r.ids <= 1 + caps["max_slices"] + 3 and r.candidates <= 1000
    # each value adds at most one slice per combination holding its dimension
    assert r.slices <= 1 + 5 + 2 * caps["max_values_per_dimension"] + 5 * caps["max_values_per_dimension"] + 3
    assert r.series <= r.slices * SERIES_PER_ROW + 100


def _ab_lines(spec: list[tuple[str, float]], seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [msgspec.json.encode({"type": "outcome", "id": i, "ts": T0 + i, "model": "m", "attributes": {"a": a},
                                 "output": 0, "label": int(rng.random() < p)}) for i, (a, p) in enumerate(spec)]


def test_admission_decisions_do_not_depend_on_where_batches_end() -> None:
    """A value degrades (its slice starts firing) just before a late value earns a place: the
    firing value is never retired, whatever the batch size (routing runs what is buffered first)."""
    lines = _ab_lines([("p", 0.1)] * 500 + [("p", 0.9)] * 300 + [("late", 0.1)] * 2000, seed=1)
    results = []
    for batch_size in (64, 100_000):
        cfg = make_config(slices={"dimensions": ["a"], "combinations": [["a"]], "max_values_per_dimension": 1,
                                  "min_samples": 50, "admission": {"candidates": 10, "min_count": 20}},
                          baseline={"reference": {"outcomes": 200}, "min_outcomes": 50}, disparity={"enabled": False},
                          replay={"batch_size": batch_size})
        engine = Engine(cfg)
        alerts = engine.feed_many(lines) + engine.drain()
        results.append(([a.to_dict() for a in alerts], slice_table(engine)["slices"], dict(engine.slices.retired)))
    assert results[0] == results[1]
    alerts, _, retired = results[0]
    assert retired == {} and any(a["slice"] == {"a": "p"} and a["state"] == "firing" for a in alerts)


def test_a_value_that_fades_and_returns_keeps_its_learned_baseline() -> None:
    cfg = make_config(slices={"dimensions": ["a"], "combinations": [["a"]], "max_values_per_dimension": 2,
                              "min_samples": 100, "admission": {"candidates": 10, "min_count": 50, "half_life": 1000}},
                      baseline={"reference": {"outcomes": 4000}, "min_outcomes": 500}, disparity={"enabled": False})
    spec = [("p", .30), ("q", .05)] * 2000  # reference: p learns about 0.30
    spec += [("q", .05), ("late", .05)] * 3000  # p absent: late takes its place
    spec += [("q", .05), ("p", .30)] * 3000  # p returns at its usual rate
    engine = Engine(cfg)
    alerts = engine.feed_many(_ab_lines(spec, seed=5)) + engine.drain()
    assert engine.slices.retired["a"] >= 2  # p gave its place to late, then late to p
    p = next(r for r in slice_table(engine)["slices"] if r["slice"] == {"a": "p"})
    assert p["baseline_source"] == "reference" and p["baseline"] > 0.28 and not p["new"]
    assert not [a for a in alerts if a.slice == {"a": "p"} and a.kind == "drift"]


# ---- whole slices, once max_slices is full ---------------------------------------------------
_LATTICE = dict(slices={"dimensions": ["a", "b", "c", "d"], "combinations": "auto", "max_level": 3,
                        "max_slices": 300, "min_samples": 100,
                        "admission": {"candidates": 200, "min_count": 50, "half_life": 2000}},
                baseline={"reference": {"outcomes": 4000}, "min_outcomes": 200}, disparity={"enabled": False})
_DEEP = {"a": "a5", "b": "b5", "c": "c5"}  # the late intersection (d varies)


def _lattice_lines(before: int, after: int, seed: int) -> list[bytes]:
    """Uniform traffic over 6 values per dimension (1,104 possible slices at level 3, cap 300),
    then a three-way intersection that carries 30 % of outcomes at error rate 0.5 against 0.1."""
    rng = random.Random(seed)
    out = []
    for i in range(before + after):
        attrs = {dim: f"{dim}{rng.randrange(6)}" for dim in "abcd"}
        if i >= before and rng.random() < 0.3:
            attrs.update(_DEEP)
        p = 0.5 if all(attrs[k] == v for k, v in _DEEP.items()) and i >= before else 0.1
        out.append(msgspec.json.encode({"type": "outcome", "id": i, "ts": T0 + i, "model": "m", "attributes": attrs,
                                        "output": 0, "label": int(rng.random() < p)}))
    return out


def test_a_late_frequent_intersection_takes_the_place_of_a_slice_that_faded() -> None:
    """At lattice level 3 the 300 places fill first come; a three-way intersection that becomes
    frequent later is admitted, inherits its baseline, and is alerted on; ids stay bounded."""
    engine = Engine(make_config(**_LATTICE))
    uniform = _lattice_lines(8000, 0, seed=4)
    assert not engine.feed_many(uniform[:6000]) and engine.slices.slice_overflow > 0  # the cap is full
    # the more frequent coarse slices took the places the first three-way slices had: every
    # one- and two-way slice is tracked, and then places stop changing hands (twice the count)
    levels = Counter(len(engine.slices.keys[sid].values) for sid in engine.slices.live()
                     if not engine.slices.is_overflow(sid))
    assert levels[1] == 4 * 6 and levels[2] == 6 * 36, levels
    settled = engine.slices.slices_retired
    assert not engine.feed_many(uniform[6000:]) + engine.drain() and engine.slices.slices_retired == settled
    engine = Engine(make_config(**_LATTICE))
    alerts = engine.feed_many(_lattice_lines(8000, 12_000, seed=4)) + engine.drain()
    deep = next(r for r in slice_table(engine)["slices"] if r["slice"] == _DEEP)
    assert deep["new"] and deep["baseline_source"] == "inherited"
    assert any(a.slice == _DEEP and a.kind == "drift" and a.state == "firing" for a in alerts)
    combos = len(engine.slices.combos)
    assert len(engine.slices.live()) <= 1 + 300 + combos  # + one __other__ slice per combination
    assert len(engine.slices) <= 1 + 300 + combos + engine.slices.slices_retired
    assert len(engine.slices._slice_admission.candidates["m"]) <= 200


def test_slice_admission_does_not_depend_on_batches_or_restarts(tmp_path) -> None:
    lines = _lattice_lines(6000, 6000, seed=7)
    results = []
    for batch_size in (61, 100_000):
        engine = Engine(make_config(**_LATTICE, replay={"batch_size": batch_size}))
        alerts = engine.feed_many(lines) + engine.drain()
        results.append(([a.to_dict() for a in alerts], slice_table(engine)["slices"], engine.slices.slices_retired))
    assert results[0] == results[1] and results[0][2] >= 1
    got, current = _with_restarts(make_config(**_LATTICE), lines, (2503, 7001, len(lines)), tmp_path)
    got += current.drain()
    assert [a.to_dict() for a in got] == results[0][0]
    assert slice_table(current)["slices"] == results[0][1] and current.slices.slices_retired == results[0][2]


def test_a_firing_slice_keeps_its_place() -> None:
    idx = SliceIndex(SlicesConfig(dimensions=["a", "b"], combinations=[["a"], ["b"], ["a", "b"]], max_slices=4,
                                  admission={"candidates": 10, "min_count": 20, "half_life": 10_000}))
    idx.route("m", None, {"a": "p", "b": "x"})  # population, a=p, b=x, (p, x): the cap
    weakest = idx.find("m", 1, ("p",))
    idx.busy = lambda sid: sid == weakest
    for _ in range(25):
        idx.route("m", None, {"a": "q", "b": "x"})
    assert idx.find("m", 1, ("q",)) >= 0 and idx.find("m", 1, ("p",)) == weakest
    assert idx.find("m", 2, ("x",)) >= 0  # (q, x) was routed alongside: kept too
    assert idx.slices_retired == 1 and idx.find("m", 3, ("p", "x")) == -1  # the weakest not busy gave way
