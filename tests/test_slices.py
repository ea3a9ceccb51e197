from __future__ import annotations

import random
import tracemalloc

import msgspec

from monitor.config import SlicesConfig
from monitor.engine import Engine
from monitor.slices import OTHER, SliceIndex
from tests.conftest import make_config


def test_missing_attribute_is_unknown_never_imputed() -> None:
    idx = SliceIndex(SlicesConfig(dimensions=["tenant", "accent"], combinations=[["tenant"], ["accent"]]))
    ids = idx.route("m", None, {"other": "x"})
    assert [idx.describe(i) for i in ids] == [{}, {"tenant": "unknown"}, {"accent": "unknown"}]
    ids = idx.route("m", "st-marys", {"accent": "scottish"})
    assert [idx.describe(i) for i in ids] == [{}, {"tenant": "st-marys"}, {"accent": "scottish"}]


def test_slices_never_mix_models() -> None:
    idx = SliceIndex(SlicesConfig(dimensions=["a"], combinations=[["a"]]))
    assert set(idx.route("m1", None, {"a": "x"})).isdisjoint(idx.route("m2", None, {"a": "x"}))


def test_value_cap_maps_to_other_and_counts() -> None:
    idx = SliceIndex(SlicesConfig(dimensions=["a"], combinations=[["a"]], max_values_per_dimension=3))
    for v in "pqrstu":
        idx.route("m", None, {"a": v})
    assert idx.describe(idx.route("m", None, {"a": "z"})[1]) == {"a": OTHER}
    assert idx.value_overflow["a"] == 4
    assert idx.describe(idx.route("m", None, {"a": "p"})[1]) == {"a": "p"}  # known values keep their slice


def test_a_flood_of_new_values_cannot_grow_memory() -> None:
    cfg = SlicesConfig(dimensions=["a", "b"], combinations=[["a"], ["b"], ["a", "b"]],
                       max_values_per_dimension=50, max_slices=500)
    idx = SliceIndex(cfg)
    rng = random.Random(1)
    for _ in range(2000):  # warm up to the caps (values, candidates, slices)
        idx.route("m", None, {"a": str(rng.random()), "b": str(rng.random())})
    tracemalloc.start()
    for _ in range(20_000):  # every live object (the candidates' values, ...) is now a traced one
        idx.route("m", None, {"a": str(rng.random()), "b": str(rng.random())})
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(100_000):
        idx.route("m", None, {"a": str(rng.random()), "b": str(rng.random())})
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(idx) <= 1 + 500 + 3  # regular slices + the population + one overflow slice per combination
    assert grown < 200_000, grown
    assert idx.value_overflow["a"] >= 100_000 and idx.retired["a"] == 0  # junk never outweighs a tracked value


def test_a_flood_of_new_intersections_cannot_grow_memory_at_level_3() -> None:
    """Every value is within its cap, but the three-way intersections are not: slices beyond
    max_slices are only counted as candidates (a bounded summary); places change hands only
    while the most frequent (coarser) slices take them, and memory stops growing."""
    cfg = make_config(slices={"dimensions": ["a", "b", "c", "d"], "combinations": "auto", "max_level": 3,
                              "max_slices": 500, "min_samples": 10**6})
    engine = Engine(cfg)
    rng = random.Random(2)

    def outcomes(n: int) -> list[bytes]:  # 4 × 27,000 three-way slices
        return [msgspec.json.encode({"type": "outcome", "id": i, "ts": 1795514400.0, "model": "m", "output": 0,
                                     "label": 0, "attributes": {d: f"{d}{rng.randrange(30)}" for d in "abcd"}})
                for i in range(n)]
    engine.feed_many(outcomes(40_000))
    idx = engine.slices
    settled = idx.slices_retired
    batch = outcomes(40_000)
    tracemalloc.start()
    engine.feed_many(batch[:10_000])
    before = tracemalloc.get_traced_memory()[0]
    engine.feed_many(batch[10_000:])
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(idx.live()) <= 1 + 500 + len(idx.combos) and len(idx) <= len(idx.live()) + 100
    assert len(idx._slice_admission.candidates["m"]) == cfg.slices.admission.candidates
    assert idx.slices_retired == settled and idx.slice_overflow >= 30_000
    assert grown < 300_000, grown


def test_slice_cap_counts_overflowing_outcomes() -> None:
    idx = SliceIndex(SlicesConfig(dimensions=["a"], combinations=[["a"]], max_slices=2))
    for v in "pqrs":
        idx.route("m", None, {"a": v})
        idx.route("m", None, {"a": v})
    assert [k.values for k in idx.keys] == [(), ("p",), (OTHER,)]
    assert idx.slice_overflow == 6  # the population counts toward the cap: q, r and s overflow, twice each


def test_tenant_may_come_from_attributes() -> None:
    idx = SliceIndex(SlicesConfig(dimensions=["tenant"], combinations=[["tenant"]]))
    a = idx.route("m", None, {"tenant": "x"})
    b = idx.route("m", None, {"tenant": "y"})
    c = idx.route("m", "y", {})
    assert a != b and b == c
