"""The SliceLine ranking: the worst slice first, small slices penalised, served and printed, never alerted on."""

from __future__ import annotations

import http.client
import json
import random

import msgspec

from monitor.cli import main
from monitor.engine import Engine
from monitor.exposition import SliceCollector
from monitor.ranking import sliceline_score, top_slices
from monitor.server import Health, Server
from monitor.table import slice_table
from tests.conftest import make_config

T0 = 1795514400.0


def _table() -> dict:
    """a = x and b = y errs 40% (about 1/8 of the traffic); a = t is rare (1%) and errs 60%; the rest 10%."""
    rng = random.Random(4)
    lines = []
    for i in range(20_000):
        a = "t" if rng.random() < 0.01 else rng.choice("xzw")
        b = rng.choice("yv")
        p = 0.6 if a == "t" else 0.4 if (a, b) == ("x", "y") else 0.1
        lines.append(msgspec.json.encode({"type": "outcome", "id": f"o{i}", "ts": T0 + i, "model": "m",
                                          "attributes": {"a": a, "b": b}, "output": 0,
                                          "label": int(rng.random() < p)}))
    engine = Engine(make_config(slices={"dimensions": ["a", "b"], "combinations": "auto", "min_samples": 100},
                                baseline={"reference": {"outcomes": 2000}, "min_outcomes": 200}))
    engine.feed_many(lines)
    engine.drain()
    return slice_table(engine)


def test_the_worst_sizeable_slice_ranks_first_and_tiny_ones_are_penalised() -> None:
    table = _table()
    top = top_slices(table, 5)
    assert top[0]["slice"] == {"a": "x", "b": "y"} and top[0]["score"] > 0 and top[0]["gap"] > 0.25
    assert [e["score"] for e in top] == sorted((e["score"] for e in top), reverse=True)
    rare = next(e for e in top_slices(table, 100) if e["slice"] == {"a": "t"})
    assert rare["value"] > top[0]["value"] and rare["score"] < top[0]["score"]  # worse, but 1% of the traffic
    assert all(e["slice"] != {} and e["n"] >= 100 for e in top_slices(table, 100))
    assert sliceline_score(0.1, 0.1, 500, 1000) < 0  # as bad as the model and half of it: not interesting


def test_served_and_printed(tmp_path, capsys) -> None:
    table = _table()
    collector = SliceCollector()
    collector.publish(table)
    server = Server(collector, Health(), "127.0.0.1", 0).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        for path, status in (("/v1/slices?top=3", 200), ("/v1/slices?top=0", 400), ("/v1/slices?top=x", 400),
                             ("/v1/slices?top=3&evil=%7B%7D", 400), ("/v1/slices?top=2&metric=error_rate", 200),
                             ("/v1/slices?", 200)):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = json.loads(resp.read())
            assert resp.status == status, (path, body)
            if path == "/v1/slices?":  # an empty query is no query: the whole table
                assert body["slices"] == table["slices"]
            if path == "/v1/slices?top=3":
                assert [e["slice"] for e in body["top"]] == [e["slice"] for e in top_slices(table, 3)]
            if status == 400:
                assert body["path"].startswith("?")
        conn.close()
    finally:
        server.close()
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    assert main(["top", "--summary", str(path), "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "a=x, b=y" in out[1] and "never an alert" in out[-1]
    assert main(["top", "--summary", str(tmp_path / "missing.json")]) == 1


def _three_way(seed: int, worse: float) -> list[bytes]:
    """Dimensions a, b, c (3 values each), tracked two at a time; a = x and b = y and c = z errs
    ``worse`` from the start (everything else 10%)."""
    rng = random.Random(seed)
    lines = []
    for i in range(60_000):
        a, b, c = rng.choice("xuv"), rng.choice("yuv"), rng.choice("zuv")
        p = worse if (a, b, c) == ("x", "y", "z") else 0.1
        lines.append(msgspec.json.encode({"type": "outcome", "id": f"o{i}", "ts": T0 + i, "model": "m",
                                          "attributes": {"a": a, "b": b, "c": c}, "output": 0,
                                          "label": int(rng.random() < p)}))
    return lines


def _proposing_engine() -> Engine:
    return Engine(make_config(slices={"dimensions": ["a", "b", "c"], "combinations": "auto", "max_level": 2,
                                      "min_samples": 100, "proposals": {"enabled": True, "every": 5000, "count": 3}},
                              baseline={"reference": {"outcomes": 2000}, "min_outcomes": 200}))


def test_an_undeclared_three_way_intersection_is_proposed_and_confirmed_on_later_outcomes() -> None:
    engine = _proposing_engine()
    engine.feed_many(_three_way(seed=6, worse=0.5))
    engine.drain()
    mine = [h for h in engine.bounty.hypotheses.values() if h.sub.submitter == "lastmile"]
    target = {"all": [{"dim": "a", "eq": "x"}, {"dim": "b", "eq": "y"}, {"dim": "c", "eq": "z"}]}
    (found,) = [h for h in mine if h.sub.group == target]
    assert found.status == "confirmed" and found.sub.ts > T0 + 4999  # proposed after the first 5,000, tested after
    # it is then tracked as a slice of its own, and ranks first
    assert engine.slices.find_slice("m", {"group": "a = x and b = y and c = z"}) >= 0
    assert top_slices(slice_table(engine), 1)[0]["slice"] == {"group": "a = x and b = y and c = z"}


def test_what_is_proposed_from_a_small_gap_is_not_confirmed() -> None:
    """a = x and a = w err 14.5% against 10% elsewhere: they rank well, so their union and their
    intersections with other slices are proposed, but no group is worse than the rest by the
    claimed 0.05; tested on later outcomes, nothing is confirmed. (On a stream with no gap at
    all, nothing even scores above zero.)"""
    proposed = 0
    for seed in (7, 8, 9):
        rng = random.Random(seed)
        lines = []
        for i in range(60_000):
            a, b, c = rng.choice("xwv"), rng.choice("yuv"), rng.choice("zuv")
            lines.append(msgspec.json.encode({"type": "outcome", "id": f"o{i}", "ts": T0 + i, "model": "m",
                                              "attributes": {"a": a, "b": b, "c": c}, "output": 0,
                                              "label": int(rng.random() < (0.145 if a in "xw" else 0.1))}))
        engine = _proposing_engine()
        engine.feed_many(lines)
        engine.drain()
        mine = [h for h in engine.bounty.hypotheses.values() if h.sub.submitter == "lastmile"]
        proposed += len(mine)
        assert not [h for h in mine if h.status == "confirmed"], seed
    assert proposed >= 3
    engine = _proposing_engine()
    engine.feed_many(_three_way(seed=7, worse=0.1))
    engine.drain()
    assert not [h for h in engine.bounty.hypotheses.values() if h.status == "confirmed"]


def test_the_worst_slices_are_exported_for_the_dashboard() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from monitor.exposition import RANKED

    table = _table()
    collector = SliceCollector()
    collector.publish(table)
    registry = CollectorRegistry()
    registry.register(collector)
    lines = [line for line in generate_latest(registry).decode().splitlines()
             if line.startswith("lastmile_slice_rank_score{")]
    assert 0 < len(lines) <= RANKED
    assert 'a="x"' in lines[0] and 'b="y"' in lines[0]  # the worst first, as top_slices ranks it
