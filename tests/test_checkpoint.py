"""Checkpoints: an interrupted run restored from a checkpoint equals a run that never stopped."""

from __future__ import annotations

import random

import pytest

from monitor.checkpoint import CheckpointError, CheckpointStore
from monitor.engine import Engine
from monitor.simulate import SpeechScenario
from monitor.table import slice_table
from tests.conftest import ROOT


def engine() -> Engine:
    from monitor.config import load_config

    return Engine(load_config(ROOT / "config" / "asr.yaml"))


def test_restore_continues_exactly(tmp_path) -> None:
    lines = list(SpeechScenario(outcomes=60_000, seed=4).events())
    whole = engine()
    expected = whole.feed_many(lines) + whole.flush()
    assert expected, "the scenario has an incident"

    store = CheckpointStore(tmp_path)
    cuts = sorted(random.Random(1).sample(range(1, len(lines)), 4)) + [len(lines)]
    got, start = [], 0
    current = engine()
    for cut in cuts:
        got += current.feed_many(lines[start:cut]) + current.flush()
        data, arrays = current.state()
        store.save({"events": {0: cut}}, data, arrays)
        ckpt = store.latest()
        assert ckpt.offsets == {"events": {0: cut}}
        current = engine()  # a new process
        current.restore(ckpt.data, ckpt.arrays)
        start = ckpt.offsets["events"][0]
    assert [a.to_dict() for a in got] == [a.to_dict() for a in expected]
    assert slice_table(current) == slice_table(whole)
    assert len(list(tmp_path.glob("ckpt-*.lmc"))) == 2  # the newest and the previous one


def test_damaged_or_foreign_checkpoints_give_a_clear_error(tmp_path) -> None:
    store = CheckpointStore(tmp_path)
    e = engine()
    e.feed_many(list(SpeechScenario(outcomes=500, seed=1).events()))
    e.flush()
    path = store.save({"t": {0: 1}}, *e.state())
    blob = path.read_bytes()
    path.write_bytes(blob[:-100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt.*move .* aside"):
        store.latest()
    path.write_bytes(b"\x80\x04\x95pickle-bytes")  # never unpickled
    with pytest.raises(CheckpointError, match="not a lastmile checkpoint"):
        store.latest()
    path.unlink()
    assert store.latest() is None


def test_a_checkpoint_only_loads_into_the_same_layout(tmp_path) -> None:
    from tests.conftest import make_config

    store = CheckpointStore(tmp_path)
    e = engine()
    store.save({}, *e.state())
    other = Engine(make_config(slices={"dimensions": ["accent"], "combinations": [["accent"]]}))
    ckpt = store.latest()
    with pytest.raises(ValueError, match="must match"):
        other.restore(ckpt.data, ckpt.arrays)


def _flipping(n: int, seed: int) -> list[bytes]:
    """accent a1 degrades and recovers every 25,000 outcomes: alerts fire and resolve."""
    import msgspec

    rng = random.Random(seed)
    lines = []
    for i in range(n):
        a, p = f"a{rng.randrange(5)}", 0.1
        if (i // 25_000) % 2 == 1 and a == "a1":
            p = 0.3
        lines.append(msgspec.json.encode({"type": "outcome", "id": i, "ts": 1795514400.0 + i, "model": "m",
                                          "attributes": {"accent": a}, "output": 0, "label": int(rng.random() < p)}))
    return lines


def test_detectors_from_a_four_slot_checkpoint_continue_exactly() -> None:
    """Checkpoints written before a kind's fire and resolve detectors shared a slot hold four per
    row; restored, each row keeps the one its state runs, and the run goes on exactly as one
    that never stopped (through resolutions and new firings)."""
    import numpy as np

    from monitor.events import parse_ts
    from monitor.rows import F
    from tests.conftest import make_config

    cfg = make_config(metrics={"names": ["error_rate"]},
                      slices={"dimensions": ["accent"], "combinations": [["accent"]], "min_samples": 200},
                      baseline={"reference": {"outcomes": 10_000}, "min_outcomes": 500})
    lines = _flipping(120_000, seed=2)
    whole = Engine(cfg)
    expected = whole.feed_many(lines) + whole.flush()
    assert {a.state for a in expected} == {"firing", "resolved"}
    resolved = next(a for a in expected if a.state == "resolved")
    cut = int(parse_ts(resolved.ts) - 1795514400.0) - 300  # while a resolve detector is on its way
    first = Engine(cfg)
    got = first.feed_many(lines[:cut]) + first.flush()
    data, arrays = first.state()
    st, det = arrays["st"], arrays["det"]
    drift, disparity = st[:, F.DSTATE] > 0, st[:, F.PSTATE] > 0
    assert det[drift, 0].any()  # cut while a firing slice's resolve detector has evidence
    old = np.zeros((det.shape[0], 4, det.shape[2]))  # fire 0 / resolve 1 (drift), fire 2 / resolve 3 (disparity)
    old[~drift, 0], old[drift, 1] = det[~drift, 0], det[drift, 0]
    old[~disparity, 2], old[disparity, 3] = det[~disparity, 1], det[disparity, 1]
    second = Engine(cfg)
    second.restore(data, {**arrays, "det": old})
    got += second.feed_many(lines[cut:]) + second.flush()
    assert [a.to_dict() for a in got] == [a.to_dict() for a in expected]
