"""Bias-bounty submissions through replay: prospective tests, duplicates, verdicts, bad submissions."""

from __future__ import annotations

import json
import math

import msgspec
import pytest

from monitor.cli import main
from monitor.simulate import SpeechScenario
from tests.conftest import ROOT

T0 = 1795514400.0


def _sub(sid: str, ts: float, group, kind: str = "disparity", gap: float = 0.03, **budget) -> bytes:
    return msgspec.json.encode({"type": "submission", "id": sid, "ts": ts, "model": "asr-en", "submitter": "org-x",
                                "group": group, "claim": {"kind": kind, "metric": "wer", "min_gap": gap},
                                "budget": {"max_outcomes": 5000, "deadline": "1d", **budget}})


def test_submissions_in_a_replay_file_get_sound_verdicts(tmp_path) -> None:
    # 6,000 s of traffic, ward-b at st-marys from half-way
    lines = list(SpeechScenario(outcomes=60_000, seed=3, malformed=0.0, rate_per_second=10).events())
    end = msgspec.json.decode(lines[-1])["ts"]
    subs = [
        _sub("a", T0, "noise = ward-b"),  # true gap about +0.07 over the rest
        _sub("b", T0 + 5, {"dim": "noise", "in": ["ward-b"]}),  # the same hypothesis, spelled otherwise
        _sub("c", T0, "accent = general-american", gap=0.02),  # an easy accent: below the rest
        _sub("d", T0, "colour = red"),  # not a declared dimension
        _sub("e", T0, "tenant = nobody", deadline="1h"),  # a group that never occurs
        _sub("f", T0 + 5900, "noise = ward-b", kind="drift", gap=0.01),  # submitted when the data is nearly over
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(subs + lines) + b"\n")
    out = tmp_path / "verdicts.jsonl"
    assert main(["replay", str(path), "--config", str(ROOT / "config" / "asr.yaml"), "--quiet",
                 "--verdicts-out", str(out), "--summary-out", str(tmp_path / "table.json"),
                 "--alerts-out", str(tmp_path / "alerts.jsonl")]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    final = {}
    for r in records:
        for sid in r["submissions"]:
            final[sid] = r
    assert set(final) == {"a", "b", "c", "e", "f"}
    a = final["a"]
    assert a["status"] == "confirmed" and a["submissions"] == ["a", "b"] and a["e_value"] >= a["threshold"]
    assert final["b"]["hypothesis"] == a["hypothesis"]
    assert final["c"]["status"] == "refuted" and final["c"]["interval"][1] <= 0.02
    assert final["e"]["status"] == "untestable" and final["e"]["n"] == 0
    # prospective: only outcomes predicted after the submission count
    assert final["f"]["status"] == "pending" and final["f"]["n"] < 200 < a["n"]
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["pipeline"]["invalid"] == {"bad_submission": 1}
    assert table["pipeline"]["submissions"] == {"pending": 1, "confirmed": 1, "not_confirmed": 0, "refuted": 1,
                                                "untestable": 1}
    assert end > T0 + 5900
    # the confirmation goes to the sinks as an alert record of kind `submission`, crediting the submitter
    (confirmation,) = [a for a in map(json.loads, (tmp_path / "alerts.jsonl").read_text().splitlines())
                       if a["kind"] == "submission"]
    assert confirmation["fingerprint"] == a["hypothesis"] and confirmation["slice"] == {"group": "noise = ward-b"}
    assert "submitted by org-x (a, 2026-11-24T10:00:00.000Z)" in confirmation["summary"]
    assert confirmation["ts"] == a["decided"] and a["credited"] == "org-x"
    # ... and the group is tracked from then on, as a slice of its own
    pinned = [r for r in table["slices"] if r["slice"] == {"group": "noise = ward-b"}]
    ward_b = next(r for r in table["slices"] if r["slice"] == {"noise": "ward-b"})
    assert pinned and 0 < pinned[0]["n"] < ward_b["n"]
    # pinned during the reference period, it still never learns its own (bad) rate as its baseline
    assert pinned[0]["baseline_source"] == "inherited" and pinned[0]["baseline_from"] == {"noise": "ward-b"}


def test_a_confirmation_is_one_notification() -> None:
    from monitor.delivery import Dispatcher
    from monitor.sinks import AlertingLinks, AlertmanagerSink, DeliveryConfig, SinkConfig, enrich

    record = {"kind": "submission", "state": "firing", "model": "asr-en", "slice": {"group": "noise = ward-b"},
              "metric": "wer", "value": 0.07, "reference": 0.03, "n": 400, "ts": "2026-11-24T12:00:00.000Z",
              "fingerprint": "0123456789abcdef", "tolerance": 0.03, "summary": "Bias bounty confirmed", "incident": ""}
    rich = enrich(record, AlertingLinks())
    assert rich["severity"] == "ticket" and rich["runbook_url"].endswith("LastmileSubmissionConfirmed.md")
    (alert,) = AlertmanagerSink(SinkConfig(name="am", type="alertmanager", url="http://x")).request(rich).body
    assert alert["labels"]["alertname"] == "LastmileSubmissionConfirmed" and alert["labels"]["component"] == "submission"
    assert alert["endsAt"] == "2026-11-25T12:00:00.000Z"  # expires by itself: nothing will resolve it
    default = Dispatcher([AlertmanagerSink(SinkConfig(name="am", type="alertmanager", url="http://x"))],
                         DeliveryConfig(), AlertingLinks())
    default.submit(record)
    assert default.pending == 0  # opt-in: existing sinks do not start receiving confirmations
    dispatcher = Dispatcher([AlertmanagerSink(SinkConfig(name="am", type="alertmanager", url="http://x",
                                                         kinds=["drift", "disparity", "submission"]))],
                            DeliveryConfig(), AlertingLinks())
    dispatcher.submit(record)
    assert dispatcher.pending == 1 and not dispatcher._firing  # delivered once, never re-sent
    from monitor.sinks import SlackSink
    slack = SlackSink(SinkConfig(name="s", type="slack", url="http://hooks", kinds=["submission"]))
    text = slack.request(enrich({**record, "summary": "x <!channel> <https://evil|runbook> & y"},
                                AlertingLinks())).body["text"]  # type: ignore[index]
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&amp; y" in text


def test_a_checkpoint_restores_the_tests_and_gives_the_same_verdicts(tmp_path) -> None:
    from monitor.checkpoint import CheckpointStore
    from monitor.config import load_config
    from monitor.engine import Engine

    lines = [_sub("a", T0, "noise = ward-b"), _sub("c", T0, "accent = general-american", gap=0.02),
             _sub("g", T0, "noise = ward-b and accent = scottish", kind="drift", gap=0.02)]
    lines += list(SpeechScenario(outcomes=60_000, seed=4, malformed=0.0).events())
    cfg = load_config(ROOT / "config" / "asr.yaml")
    whole = Engine(cfg)
    whole.feed_many(lines)
    whole.drain()
    expected = whole.bounty.take_records()
    assert {r["status"] for r in expected} >= {"confirmed", "refuted"}
    store = CheckpointStore(tmp_path)
    current, start, got = Engine(cfg), 0, []
    for cut in (9_001, 51_234, 90_007, len(lines)):
        current.feed_many(lines[start:cut])
        current.flush()
        got += current.bounty.take_records()  # handed out before the checkpoint, as the daemon's sinks are
        store.save({"e": {0: cut}}, *current.state())
        ckpt = store.latest()
        current = Engine(cfg)
        current.restore(ckpt.data, ckpt.arrays)
        start = cut
    current.drain()
    got += current.bounty.take_records()
    assert got == expected


def test_an_impossible_claim_is_refuted_without_stopping_anything() -> None:
    """A drift claim above the error cap once the baseline is known (0.12 + 0.95 > 1) is refuted;
    the engine, and every other test, go on."""
    from monitor.config import load_config
    from monitor.engine import Engine

    engine = Engine(load_config(ROOT / "config" / "asr.yaml"))
    lines = [_sub("huge", T0, "noise = ward-b", kind="drift", gap=0.95), _sub("a", T0, "noise = ward-b")]
    lines += list(SpeechScenario(outcomes=60_000, seed=3, malformed=0.0).events())
    engine.feed_many(lines)
    engine.drain()
    status = {r["submissions"][0]: r["status"] for r in engine.bounty.take_records()}
    assert status["huge"] == "refuted" and status["a"] == "confirmed"


def test_submissions_are_accepted_only_where_they_may_come_from() -> None:
    """The daemon reads submissions only from the submissions topic (which only the authenticated
    API writes to); one on an event topic is refused and counted."""
    from monitor.config import load_config
    from monitor.engine import Engine

    engine = Engine(load_config(ROOT / "config" / "asr.yaml"))
    bad: list[tuple[int, str]] = []
    engine.feed_many([_sub("sneaky", T0, "noise = ward-b")], on_invalid=lambda i, r: bad.append((i, r)),
                     submissions=False)
    assert bad == [(0, "bad_submission")] and not engine.bounty.hypotheses
    engine.feed_many([_sub("ok", T0, "noise = ward-b")])
    assert len(engine.bounty.hypotheses) == 1


def test_a_submission_whose_model_goes_quiet_is_decided_at_its_deadline() -> None:
    from monitor.config import load_config
    from monitor.engine import Engine

    engine = Engine(load_config(ROOT / "config" / "asr.yaml"))
    outcomes = [msgspec.json.encode({"type": "outcome", "id": f"o{i}", "ts": T0 + i, "model": "asr-en",
                                     "tenant": "st-marys", "output": "a b c", "label": "a b d"}) for i in range(300)]
    engine.feed_many([_sub("quiet", T0, "tenant = nobody", deadline="1h")] + outcomes)
    engine.flush()
    assert engine.expire_submissions(T0 + 3000) == [] and engine.bounty.pending == 1  # not yet
    engine.expire_submissions(T0 + 3601)
    (record,) = [r for r in engine.bounty.take_records() if r["status"] != "pending"]
    assert record["status"] == "untestable" and record["decided"] == "2026-11-24T11:00:00.000Z"


def _pin_lines(seed: int) -> list[bytes]:
    """Dimensions a and b, tracked one at a time; from outcome 3,000 on, the undeclared intersection
    a = x and b = y errs 45% of the time against 10% for everything else."""
    import random

    rng = random.Random(seed)
    sub = msgspec.json.encode({"type": "submission", "id": "s1", "ts": T0 + 3001, "model": "m", "submitter": "org-x",
                               "group": "a = x and b = y", "claim": {"kind": "disparity", "metric": "error_rate",
                                                                     "min_gap": 0.1},
                               "budget": {"max_outcomes": 5000, "deadline": "30d"}})
    lines = [sub]
    for i in range(12_000):
        a, b = rng.choice("xz"), rng.choice("yw")
        p = 0.45 if i >= 3000 and (a, b) == ("x", "y") else 0.1
        lines.append(msgspec.json.encode({"type": "outcome", "id": f"o{i}", "ts": T0 + 1 + i, "model": "m",
                                          "attributes": {"a": a, "b": b}, "output": 0, "label": int(rng.random() < p)}))
    return lines


def _pin_config(batch_size: int, **submissions):
    from tests.conftest import make_config

    return make_config(slices={"dimensions": ["a", "b"], "combinations": [["a"], ["b"]], "min_samples": 100},
                       metrics={"names": ["error_rate"]},
                       baseline={"reference": {"outcomes": 2000}, "min_outcomes": 200},
                       replay={"batch_size": batch_size}, submissions=submissions)


def test_a_confirmed_group_is_pinned_as_a_slice_whatever_the_batches() -> None:
    """The confirmed group becomes a tracked slice from the outcome after the deciding one: its own
    drift (baseline from the slices containing it) and disparity detectors, at the pinned share of
    the false-alarm budget; the same alerts and table whatever the batch size."""
    from monitor import kernel as K
    from monitor.engine import Engine
    from monitor.table import slice_table

    lines = _pin_lines(seed=8)
    results = []
    for batch_size in (37, 100_000):
        engine = Engine(_pin_config(batch_size))
        alerts = engine.feed_many(lines) + engine.drain()
        records = engine.bounty.take_records()
        results.append(([a.to_dict() for a in alerts], slice_table(engine)["slices"], records))
    assert results[0] == results[1]
    alerts, rows, records = results[0]
    (final,) = [r for r in records if r["status"] != "pending"]
    assert final["status"] == "confirmed"
    (group,) = [r for r in rows if r["slice"] == {"group": "a = x and b = y"}]
    decided = next(i for i, line in enumerate(lines[1:]) if msgspec.json.decode(line)["ts"] == _ts(final["decided"]))
    after = sum(1 for line in lines[decided + 2:]
                if msgspec.json.decode(line)["attributes"] == {"a": "x", "b": "y"})
    assert group["n"] == after  # every group outcome after the deciding one, and only those
    a_x = next(r for r in rows if r["slice"] == {"a": "x"})
    b_y = next(r for r in rows if r["slice"] == {"b": "y"})
    assert group["baseline_source"] == "inherited" and group["baseline"] == max(a_x["baseline"], b_y["baseline"])
    fired = {a["kind"] for a in alerts if a["slice"] == {"group": "a = x and b = y"} and a["state"] == "firing"}
    assert fired == {"submission", "drift", "disparity"}  # the confirmation first, then its own detectors
    engine = Engine(_pin_config(1000))
    assert engine.h_pinned == pytest.approx(engine.h_fire + math.log(16))
    engine.feed_many(lines)
    engine.flush()
    sid = engine.slices.find_slice("m", {"group": "a = x and b = y"})
    assert engine.st[sid, K.F.H] == engine.h_pinned and engine.st[0, K.F.H] == engine.h_fire
    # Prometheus: a series of its own, labelled with the group's text
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from monitor.exposition import SliceCollector

    collector = SliceCollector()
    collector.publish(slice_table(engine))
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'lastmile_slice_outcomes_total{combination="group",group="a = x and b = y",metric="error_rate",model="m"}' \
        in text
    # off: confirmed, not tracked, and the declared slices get the whole budget
    engine = Engine(_pin_config(1000, pin=False))
    engine.feed_many(lines)
    engine.drain()
    assert engine.bounty.counts()["confirmed"] == 1 and engine.slices.pinned == 0
    assert engine.h_fire < Engine(_pin_config(1000)).h_fire


def test_a_drift_claim_is_tested_against_the_groups_baseline() -> None:
    """Drift for a group inside a worse-than-average value is judged against that value's baseline,
    not the model's: a = x errs 30% from the start (so does its group), the model about 20%."""
    import random

    from monitor.engine import Engine

    rng = random.Random(2)
    lines = [msgspec.json.encode({"type": "submission", "id": "d", "ts": T0, "model": "m", "submitter": "org-x",
                                  "group": "a = x and b = y", "claim": {"kind": "drift", "metric": "error_rate",
                                                                        "min_gap": 0.05},
                                  "budget": {"max_outcomes": 3000, "deadline": "30d"}})]
    for i in range(20_000):
        a, b = rng.choice("xz"), rng.choice("yw")
        lines.append(msgspec.json.encode({"type": "outcome", "id": f"o{i}", "ts": T0 + 1 + i, "model": "m",
                                          "attributes": {"a": a, "b": b}, "output": 0,
                                          "label": int(rng.random() < (0.3 if a == "x" else 0.1))}))
    engine = Engine(_pin_config(1000))
    engine.feed_many(lines)
    engine.drain()
    (final,) = [r for r in engine.bounty.take_records() if r["status"] != "pending"]
    assert 0.3 <= final["baseline"] < 0.34  # a = x's own (reference estimate + margin), not the model's 0.2
    # (against the model's baseline, 0.3 > 0.2 + 0.05 would have been confirmed)
    assert final["status"] in ("not_confirmed", "refuted") and final["n"] >= 500


def _ts(text: str) -> float:
    from monitor.events import parse_ts

    return parse_ts(text)


def test_pinned_groups_stop_at_max_pinned_and_a_group_already_pinned_is_shared() -> None:
    """Two claims on the same group share its slice; a second group beyond max_pinned = 1 is
    confirmed but not tracked."""
    from monitor.engine import Engine

    lines = _pin_lines(seed=8)
    extra = [msgspec.json.encode({"type": "submission", "id": sid, "ts": T0 + 3001, "model": "m",
                                  "submitter": "org-y", "group": group,
                                  "claim": {"kind": "disparity", "metric": "error_rate", "min_gap": gap},
                                  "budget": {"max_outcomes": 5000, "deadline": "30d"}})
             for sid, group, gap in (("same-group", "a = x and b = y", 0.05), ("wider", "a = x", 0.05))]
    engine = Engine(_pin_config(1000, max_pinned=1))
    engine.feed_many(lines[:1] + extra + lines[1:])
    engine.drain()
    status = {h.sub.id: h.status for h in engine.bounty.hypotheses.values()}
    assert status == {"s1": "confirmed", "same-group": "confirmed", "wider": "confirmed"}, status
    assert engine.slices.pinned == 1
    assert engine.slices.find_slice("m", {"group": "a = x and b = y"}) >= 0
    assert engine.slices.find_slice("m", {"group": "a = x"}) < 0
