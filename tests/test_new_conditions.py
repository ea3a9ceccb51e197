"""New conditions: a reference period per model, inherited baselines, provenance, one page per cause.

The seeded streams are those of ``tests/bench/new_conditions.py`` (which prints the README's
figures over more seeds); tolerances are stated per test.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from monitor.baselines import Baselines
from monitor.engine import Engine
from monitor.table import slice_table
from tests.bench.new_conditions import INCIDENT, WORSE, article_case, null_case
from tests.conftest import make_config

T0 = 1795514400.0
GRID = {"dimensions": ["a", "b"], "combinations": [["a"], ["b"], ["a", "b"]], "min_samples": 50}


@pytest.mark.parametrize("seed", [1, 2])
def test_the_articles_case_pages_within_twice_the_cusum_that_knows_the_new_rate(seed: int) -> None:
    """A new noise condition at one customer, about +5 WER points (more for two accents), from 60% of
    600,000 utterances: the first page comes within 2× the CUSUM that knows the new rate (and the
    true distribution of utterances) and tests it against the config's boundary; only slices
    overlapping the incident alert, none before it; the new condition is drift-tested against an
    inherited baseline."""
    r = article_case(600_000, seed)
    assert 0.15 < r.p1 < 0.18 and 0.11 < r.p0 < 0.13  # the scenario is the one described
    assert r.first_page is not None and r.delay_utterances is not None and r.oracle_boundary is not None
    assert r.delay_utterances <= 2 * r.oracle_boundary, (r.delay_utterances, r.oracle_boundary)
    assert INCIDENT[1] == r.first_page.slice.get("noise") and r.first_page.first_seen is not None
    assert r.overlapping_only and r.none_before
    ward = next(a for a in r.alerts if a.kind == "drift" and a.slice == {"noise": INCIDENT[1]})
    assert ward.baseline_source == "inherited" and ward.baseline_from == {}
    assert ward.reference == pytest.approx(r.p0, abs=0.01)  # held to the population's rate, not its own
    assert "new condition" in ward.summary


def test_null_late_customers_and_devices_never_drift_and_only_worse_accents_show_disparity() -> None:
    """Heterogeneous stationary accents (two far worse), a customer and a device born late with
    everyone's distribution, 10^6 utterances: zero drift alerts (the guarantee allows one expected);
    disparity alerts only on slices of a worse accent, and each worse accent is alerted."""
    r = null_case(1_000_000, seed=2)
    assert r.drift == []
    assert r.disparity and r.disparity_outside_worse == []
    assert r.worse_alerted == set(WORSE)
    assert r.inherited_late > 0  # the late slices really were judged against inherited baselines


def _outcome(i: int, attrs: dict[str, str], bad: bool) -> bytes:
    return msgspec.json.encode({"type": "outcome", "id": i, "ts": T0 + i, "model": "m", "attributes": attrs,
                                "output": 0, "label": int(bad)})


def test_a_slice_born_after_the_reference_inherits_the_largest_of_its_nearest_ancestors() -> None:
    cfg = make_config(slices=GRID, baseline={"reference": {"outcomes": 4000}, "min_outcomes": 500, "margin_sigmas": 0},
                      disparity={"enabled": False})
    engine = Engine(cfg)
    rng = np.random.default_rng(1)
    rate = {"a1": 0.3, "a2": 0.1, "b1": 0.0, "b2": 0.0}
    for i in range(4000):  # reference: a1/a2 × b1/b2; b3 does not exist yet
        a, b = ("a1", "a2")[i % 2], ("b1", "b2")[(i // 2) % 2]
        engine.feed(_outcome(i, {"a": a, "b": b}, rng.random() < rate[a]))
    for i in range(4000, 4400):  # a new value b3 (an easy device) with the hard accent a1
        engine.feed(_outcome(i, {"a": "a1", "b": "b3"}, rng.random() < 0.3))
    engine.flush()
    rows = {tuple(sorted(r["slice"].items())): r for r in slice_table(engine)["slices"]}
    a1 = rows[(("a", "a1"),)]
    assert a1["baseline_source"] == "reference" and a1["baseline"] == pytest.approx(0.3, abs=0.04)
    thin = rows[(("a", "a1"), ("b", "b3"))]
    # its nearest ancestors are a=a1 (own baseline ≈ 0.3) and b=b3 (new, none): the hard accent's rate
    assert thin["baseline_source"] == "inherited" and thin["baseline_from"] == {"a": "a1"}
    assert thin["baseline"] == a1["baseline"]
    assert thin["new"] and thin["first_seen"] == "2026-11-24T11:06:40.000Z"
    b3 = rows[(("b", "b3"),)]
    assert b3["baseline_source"] == "inherited" and b3["baseline_from"] == {} and b3["new"]
    # reference-period cells with ≥ 500 outcomes learned their own; none is new
    cell = rows[(("a", "a2"), ("b", "b1"))]
    assert cell["baseline_source"] == "reference" and not cell["new"]


def test_a_service_card_of_per_accent_rates_covers_every_intersection(tmp_path) -> None:
    """With a baseline file and no reference period, every slice inherits from the file's rates."""
    (tmp_path / "card.yaml").write_text("baselines:\n  - {slice: {a: hard}, value: 0.3}\n  - {slice: {a: easy}, value: 0.1}\n"
                                        "  - {slice: {}, value: 0.2}\n")
    cfg = make_config(slices=GRID, baseline={"source": "file", "file": str(tmp_path / "card.yaml"),
                                             "fallback_to_reference": False}, disparity={"enabled": False})
    engine = Engine(cfg)
    alerts = []
    rng = np.random.default_rng(3)
    for i in range(20_000):
        a = ("hard", "easy")[i % 2]
        b = f"b{(i // 2) % 20}"
        # half-way, the hard accent breaks on device b3 (5% of its traffic: a=hard itself rises by
        # 0.015, half the tolerance, so only slices holding b3 are truly past their boundary)
        p = 0.6 if i >= 10_000 and a == "hard" and b == "b3" else {"hard": 0.3, "easy": 0.1}[a]
        alerts += engine.feed(_outcome(i, {"a": a, "b": b}, rng.random() < p))
    alerts += engine.flush()
    rows = {tuple(sorted(r["slice"].items())): r for r in slice_table(engine)["slices"]}
    assert rows[(("a", "hard"),)]["baseline_source"] == "file"
    for b in range(20):
        assert rows[(("a", "hard"), ("b", f"b{b}"))]["baseline"] == 0.3
        assert rows[(("a", "easy"), ("b", f"b{b}"))]["baseline_from"] == {"a": "easy"}
        assert rows[(("b", f"b{b}"),)]["baseline_from"] == {}  # only the population is above it
    drifted = {tuple(sorted(a.slice.items())) for a in alerts if a.kind == "drift" and a.state == "firing"}
    assert drifted and all(("b", "b3") in s for s in drifted), drifted  # b3 only, never a healthy slice
    assert all(a.baseline_source in ("file", "inherited") for a in alerts if a.kind == "drift")


def test_an_alert_explained_by_a_firing_ancestor_with_the_same_outcomes_is_grouped_under_it() -> None:
    """b=new only ever occurs with a=x: both slices hold the same outcomes, so one incident pages once."""
    cfg = make_config(slices=GRID, baseline={"reference": {"outcomes": 3000}, "min_outcomes": 500})
    engine = Engine(cfg)
    rng = np.random.default_rng(5)
    alerts = []
    for i in range(12_000):
        a = ("x", "y", "z")[i % 3]
        b = "new" if a == "x" and i > 6000 and i % 2 else ("b1", "b2")[i % 2]
        alerts += engine.feed(_outcome(i, {"a": a, "b": b}, rng.random() < (0.5 if b == "new" else 0.1)))
    alerts += engine.flush()
    firing = [a for a in alerts if a.state == "firing"]
    by_slice = {(tuple(sorted(a.slice.items())), a.kind): a for a in firing}
    root = by_slice[((("b", "new"),), "drift")]
    assert root.explained_by is None and root.incident == root.fingerprint
    child = by_slice[((("a", "x"), ("b", "new")), "drift")]
    assert child.explained_by == {"b": "new"} and child.incident == root.fingerprint
    assert "part of the incident on b=new" in child.summary
    pages = [a for a in firing if a.explained_by is None]
    assert len(pages) < len(firing)
    table = slice_table(engine)
    grouped = [r for r in table["slices"] if r["explained_by"]]
    assert any(r["slice"] == {"a": "x", "b": "new"} for r in grouped)
    # still visible: explained alerts are in the firing list and the table
    assert any(a["fingerprint"] == child.fingerprint for a in table["alerts"])


def test_baselines_lookup_is_unchanged_for_listed_slices() -> None:
    b = Baselines({("*", frozenset({("a", "x")}), "error_rate"): 0.2})
    assert b.lookup("m", {"a": "x"}, "error_rate") == 0.2 and b.lookup("m", {"a": "y"}, "error_rate") is None


def test_min_outcomes_longer_than_the_reference_is_a_config_error() -> None:
    from monitor.config import ConfigError

    with pytest.raises(ConfigError, match="baseline.min_outcomes"):
        make_config(baseline={"reference": {"outcomes": 500}, "min_outcomes": 1000})


def test_an_explained_alert_pages_on_its_own_once_its_cause_resolves() -> None:
    """The cause resolves while the alert it explained still fires: that alert is re-issued as
    firing on its own (explained by nothing, its own incident), so it pages."""
    cfg = make_config(slices={"dimensions": ["a"], "combinations": [["a"]], "min_samples": 50},
                      baseline={"reference": {"outcomes": 200}, "min_outcomes": 50}, disparity={"enabled": False})
    engine = Engine(cfg)
    rng = np.random.default_rng(1)
    alerts = []
    spec = [("p", 0.1)] * 500 + [("p", 0.9)] * 300 + [("q", 0.02)] * 3000  # q brings the population back
    for i, (a, p) in enumerate(spec):
        alerts += engine.feed(_outcome(i, {"a": a}, rng.random() < p))
    alerts += engine.flush()
    p_alerts = [a for a in alerts if a.slice == {"a": "p"}]
    assert p_alerts[0].explained_by == {} and p_alerts[0].incident != p_alerts[0].fingerprint
    root = next(a for a in alerts if a.slice == {} and a.state == "resolved")
    again = p_alerts[1]
    assert again.state == "firing" and again.explained_by is None and again.incident == again.fingerprint
    assert again.ts == root.ts and "part of the incident" not in again.summary
    assert engine.active[again.fingerprint] == again
