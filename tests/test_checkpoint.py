"""Checkpoints: an interrupted run restored from a checkpoint equals a run that never stopped."""

from __future__ import annotations

import hashlib
import random
import struct
import time
from collections import namedtuple

import msgspec
import numpy as np
import pytest

from monitor import checkpoint as ckpt_module
from monitor.checkpoint import MAGIC, CheckpointError, CheckpointStore
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


# ---- incremental checkpoints: chains of increments on a full snapshot ---------------------------


def save(store: CheckpointStore, current: Engine, offsets: dict) -> str:
    """As the daemon checkpoints: an increment when the store allows one (the engine is its chain's head)."""
    parent = store.delta_parent()
    data, arrays = current.state(delta=parent is not None)
    store.save(offsets, data, arrays, parent=parent)
    return "full" if parent is None else "delta"


def load(store: CheckpointStore) -> tuple[Engine, object]:
    ckpt = store.latest()
    fresh = engine()
    fresh.restore(ckpt.data, ckpt.arrays, ckpt.earlier)
    return fresh, ckpt


def test_increments_restore_exactly_and_are_compacted(tmp_path) -> None:
    lines = list(SpeechScenario(outcomes=30_000, seed=6).events())
    whole = engine()
    expected = whole.feed_many(lines) + whole.flush()
    store = CheckpointStore(tmp_path, keep=2, full_every=3, delta_ratio=10.0)
    cuts = sorted(random.Random(2).sample(range(1, len(lines)), 11)) + [len(lines)]
    got, start, kinds = [], 0, []
    current = engine()
    for i, cut in enumerate(cuts):
        got += current.feed_many(lines[start:cut]) + current.flush()
        kinds.append(save(store, current, {"events": {0: cut}}))
        fresh, ckpt = load(store)  # the chain loads into the state it was written from
        assert ckpt.offsets == {"events": {0: cut}} and len(ckpt.earlier) == len(ckpt.files) - 1
        assert fresh.joiner.contents() == current.joiner.contents()
        assert slice_table(fresh) == slice_table(current)
        n = current._rows_ready
        assert fresh._rows_ready == n and np.array_equal(fresh.st[:n], current.st[:n], equal_nan=True)
        assert np.array_equal(fresh.det[:n], current.det[:n], equal_nan=True)
        if i % 3 == 1:
            current = fresh  # a restart: the engine continues from the chain
        start = cut
    assert kinds == ["full", "delta", "delta", "delta"] * 3  # a full snapshot every 3 increments
    assert [a.to_dict() for a in got] == [a.to_dict() for a in expected]
    assert slice_table(current) == slice_table(whole)
    # the newest chain and the previous one are kept
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"ckpt-{s:012d}.{'lmc' if s % 4 == 1 else 'lmd'}" for s in range(5, 13)]


def test_a_full_snapshot_once_the_increments_outgrow_it(tmp_path) -> None:
    lines = list(SpeechScenario(outcomes=4000, seed=3).events())
    store = CheckpointStore(tmp_path, full_every=100, delta_ratio=0.3)
    e = engine()
    kinds = []
    for k in range(0, len(lines), 500):
        e.feed_many(lines[k:k + 500])
        e.flush()
        kinds.append(save(store, e, {"events": {0: k + 500}}))
    assert kinds[0] == "full" and "delta" in kinds and kinds.count("full") > 1
    ckpt = store.latest()
    sizes = [p.stat().st_size for p in ckpt.files]
    assert sum(sizes[1:]) < 0.3 * sizes[0] + max(sizes[1:], default=0)


def chain_of(tmp_path, n_increments: int = 3) -> tuple[CheckpointStore, Engine, list]:
    lines = list(SpeechScenario(outcomes=3000, seed=9).events())
    store = CheckpointStore(tmp_path, delta_ratio=10.0)  # the engine's slices outweigh this small join
    e = engine()
    states = []
    step = len(lines) // (n_increments + 1)
    for k in range(n_increments + 1):
        e.feed_many(lines[k * step:(k + 1) * step])
        e.flush()
        save(store, e, {"events": {0: (k + 1) * step}})
        states.append(e.joiner.contents())
    return store, e, states


def test_a_damaged_or_missing_increment_is_named_never_loaded(tmp_path) -> None:
    store, e, _ = chain_of(tmp_path)
    files = sorted(tmp_path.glob("ckpt-*"))
    assert [f.suffix for f in files] == [".lmc", ".lmd", ".lmd", ".lmd"]
    second = files[2].read_bytes()
    files[2].write_bytes(second[:-1000])  # truncated
    with pytest.raises(CheckpointError, match=f"{files[2].name} is corrupt.*every later checkpoint file aside"):
        store.latest()
    damaged = bytearray(second)
    damaged[len(damaged) // 2] ^= 1  # one bit
    files[2].write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="corrupt"):
        store.latest()
    files[2].unlink()  # missing from the middle of the chain
    with pytest.raises(CheckpointError, match=f"{files[3].name} does not continue {files[1].name}"):
        store.latest()
    files[2].write_bytes(second)
    assert load(store)[0].joiner.contents() == e.joiner.contents()
    # an increment of another chain (another directory) put in its place
    other, _, _ = chain_of(tmp_path / "other")
    files[2].write_bytes(sorted((tmp_path / "other").glob("ckpt-*"))[2].read_bytes())
    with pytest.raises(CheckpointError, match="does not continue"):
        store.latest()
    files[2].write_bytes(second)
    files[0].unlink()  # the full snapshot is gone
    with pytest.raises(CheckpointError, match="full snapshot is missing"):
        store.latest()


def test_moving_the_newest_increments_aside_loads_the_chain_before_them(tmp_path) -> None:
    store, e, states = chain_of(tmp_path)
    files = sorted(tmp_path.glob("ckpt-*"))
    files[3].rename(tmp_path / "aside-3")  # the documented recovery
    files[2].rename(tmp_path / "aside-2")
    fresh, ckpt = load(store)
    assert ckpt.sequence == 2 and len(ckpt.earlier) == 1
    assert fresh.joiner.contents() == states[1]


def test_a_crash_between_writing_an_increment_and_its_rename_is_harmless(tmp_path, monkeypatch) -> None:
    store, e, states = chain_of(tmp_path, 2)
    lines = list(SpeechScenario(outcomes=3000, seed=9).events())
    e.feed_many(lines[-300:])
    e.flush()

    written = []

    def crash(src, dst):  # the process dies after the file is written, before the rename (kill -9:
        written.append((src, src.read_bytes()))  # nothing cleans up after it)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ckpt_module.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save(store, e, {"events": {0: 9999}})
    monkeypatch.undo()
    (src, blob), = written
    src.write_bytes(blob)
    leftovers = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    (tmp_path / ".ckpt-000000000005.lmd.tmp-1").write_bytes(leftovers[0].read_bytes()[:100])  # a half-written one
    restarted = CheckpointStore(tmp_path, delta_ratio=10.0)
    fresh, ckpt = load(restarted)  # the chain as it was before the crash
    assert ckpt.sequence == 3 and fresh.joiner.contents() == states[-1]
    fresh.feed_many(lines[-300:])
    fresh.flush()
    assert save(restarted, fresh, {"events": {0: 9999}}) == "delta"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # leftovers removed
    again, ckpt = load(CheckpointStore(tmp_path))
    assert ckpt.sequence == 4 and again.joiner.contents() == fresh.joiner.contents()


def test_an_increment_must_continue_the_newest_file(tmp_path) -> None:
    store, e, _ = chain_of(tmp_path, 1)
    data, arrays = e.state(delta=True)
    with pytest.raises(CheckpointError, match="must continue the newest"):
        store.save({}, data, arrays, parent=1)
    assert CheckpointStore(tmp_path).delta_parent() is None  # a store that has not read the chain: full


def write_format_1(path, sequence: int, offsets: dict, data: dict, arrays: dict) -> None:
    """A checkpoint as lastmile wrote it before increments (format 1)."""
    body = {"sequence": sequence, "created": time.time(),
            "offsets": {t: {str(p): o for p, o in parts.items()} for t, parts in offsets.items()}, "data": data,
            "arrays": {n: {"shape": list(a.shape), "bytes": a.astype("<f8").tobytes()} for n, a in arrays.items()}}
    head = MAGIC + struct.pack(">I", 1) + msgspec.msgpack.encode(body)
    path.write_bytes(head + hashlib.sha256(head).digest())


def test_format_1_checkpoints_still_load_and_the_chain_continues_them(tmp_path) -> None:
    from tests.test_join import EventJoiner, random_stream

    e = engine()
    e.feed_many(list(SpeechScenario(outcomes=2000, seed=2).events()))
    e.flush()
    data, arrays = e.state()
    old = EventJoiner(e.cfg.join.ttl, e.cfg.join.max_pending)
    for ev in random_stream(5, 3000):
        old.add(ev)
    data["join"] = old.state()
    write_format_1(tmp_path / "ckpt-000000000007.lmc", 7, {"events": {0: 5}}, data,
                   {"st": arrays["st"], "det": arrays["det"]})
    store = CheckpointStore(tmp_path)
    fresh, ckpt = load(store)
    assert ckpt.offsets == {"events": {0: 5}} and fresh.joiner.contents() == old.contents()
    assert slice_table(fresh)["slices"] == slice_table(e)["slices"]
    for ev in random_stream(6, 500):
        assert repr(fresh.joiner.add(ev)) == repr(old.add(ev))
    assert save(store, fresh, {"events": {0: 6}}) == "delta"  # its join part is whole: nothing to continue
    again, _ = load(store)
    assert again.joiner.contents() == old.contents()


TP = namedtuple("TP", "topic partition")


class CommitOnly:
    def __init__(self) -> None:
        self.commits: list = []

    def commit(self, offsets, timeout_ms=None) -> None:
        self.commits.append(offsets)


def test_the_daemon_checkpoints_increments_and_restarts_from_their_chain(tmp_path) -> None:
    from monitor.config import load_config
    from monitor.daemon import Daemon

    cfg = load_config(ROOT / "config" / "asr.yaml")
    cfg = cfg.model_copy(update={"checkpoint": cfg.checkpoint.model_copy(update={"directory": str(tmp_path)})})
    lines = list(SpeechScenario(outcomes=6000, seed=8).events())
    d = Daemon(cfg, on_alert=lambda a: None)
    d._restore()
    d.store.full_every, d.store.delta_ratio = 3, 10.0  # (the engine's slices outweigh this small join)
    d.consumer = CommitOnly()
    kinds = []
    for k in range(0, len(lines), 1000):
        d.engine.feed_many(lines[k:k + 1000])
        d.positions = {TP("events", 0): k + 1000}
        d.checkpoint_and_commit()
        kinds.append(d.checkpoint_stats["kind"])
        assert len(d.consumer.commits) == len(kinds)  # committed after each durable checkpoint
    assert kinds == ["full", "delta", "delta", "delta", "full", "delta", "delta", "delta", "full", "delta", "delta",
                     "delta"][:len(kinds)]
    restarted = Daemon(cfg, on_alert=lambda a: None)
    assert restarted._restore() == {"events": {0: len(range(0, len(lines), 1000)) * 1000}}
    assert restarted.engine.joiner.contents() == d.engine.joiner.contents()
    assert slice_table(restarted.engine) == slice_table(d.engine)
    restarted.consumer = CommitOnly()
    restarted.store.delta_ratio = 10.0
    restarted.positions = {TP("events", 0): 10**6}
    restarted.checkpoint_and_commit()
    assert restarted.checkpoint_stats["kind"] == "delta"  # continues the chain it restored

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    save_for_real = restarted.store.save
    restarted.store.save = disk_full
    restarted.positions = {TP("events", 0): 10**6 + 1}
    with pytest.raises(OSError):
        restarted.checkpoint_and_commit()
    restarted.store.save = save_for_real
    restarted.checkpoint_and_commit()
    assert restarted.checkpoint_stats["kind"] == "full"  # the engine's changes since the last file were lost with it
    again = Daemon(cfg, on_alert=lambda a: None)
    again._restore()
    assert again.engine.joiner.contents() == restarted.engine.joiner.contents()


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
