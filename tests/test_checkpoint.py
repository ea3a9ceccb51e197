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
