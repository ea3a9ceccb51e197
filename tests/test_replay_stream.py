"""Replay in event-time order with bounded memory: an external merge sort (monitor.replay).

The order, and so every result, must be exactly that of decoding the whole input and sorting it
stably by event time (what replay did before it spilled sorted runs to temporary files): checked
against that algorithm, written out here, on a stream with everything that could tell them apart.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import math
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from monitor import replay as replay_module
from monitor.config import ConfigError
from monitor.engine import Engine
from monitor.events import Event, InvalidEvent
from monitor.replay import Runs, replay
from monitor.submissions import Submission, parse_submission
from monitor.table import slice_table
from tests.conftest import ROOT, make_config
from tests.poison import MALFORMED

T0 = 1795514400.0
DAY = 86400.0

CFG = dict(metrics={"names": ["error_rate"]},
           slices={"dimensions": ["g", "h"], "combinations": [["g"], ["h"], ["g", "h"]], "min_samples": 50},
           baseline={"reference": {"outcomes": 2000}, "min_outcomes": 100},
           join={"ttl": "1d"})


def _config(**replay_settings):
    return make_config(**CFG, replay=replay_settings)


def _through_runs(**replay_settings):
    """The config with no in-order attempt (``replay.in_order_window: 0``): always sorted through runs."""
    return _config(in_order_window=0, **replay_settings)


def stream(n: int = 12_000, seed: int = 1) -> list[bytes]:
    """Prediction/feedback pairs (feedback up to 15 minutes late) whose slice g=c degrades half-way,
    nearly in event-time order, with: timestamps rounded to the second (ties, across pairs and
    within duplicated feedback), invalid lines, copies stamped fifty years ahead (rejected), a
    segment after a three-day gap (held, then let through by the events after it), events at the
    very end too far ahead to be decided before the end, and bias-bounty submissions (one bad)."""
    rng = random.Random(seed)
    timed: list[tuple[float, bytes]] = []

    def add(ts: float, ev: dict) -> None:
        timed.append((ts + rng.uniform(0, 40), msgspec.json.encode(ev)))  # arrival: up to 40 s out of order

    def pair(uid: str, ts: float, g: str, h: str, bad: float) -> None:
        ts = float(math.floor(ts)) if rng.random() < 0.5 else ts
        add(ts, {"type": "prediction", "id": uid, "ts": ts, "model": "m", "attributes": {"g": g, "h": h},
                 "output": "yes"})
        if rng.random() < 0.05:
            return  # never labelled
        fb = {"type": "feedback", "id": uid, "ts": math.floor(ts + rng.uniform(1, 900)),
              "label": "no" if rng.random() < bad else "yes"}
        add(fb["ts"], fb)
        if rng.random() < 0.02:
            add(fb["ts"], fb)  # delivered twice, same time
        if rng.random() < 0.01:
            add(fb["ts"] + 1, {**fb, "attributes": {"x": 1}})  # a duplicate with more attributes

    for i in range(n):
        g, h = rng.choice("abc"), rng.choice("xy")
        pair(f"u{i}", T0 + i * 0.5, g, h, 0.5 if g == "c" and i > n // 2 else 0.1)
    gap = T0 + n * 0.5 + 3 * DAY
    for i in range(600):  # the stream resumes three days later
        pair(f"late{i}", gap + i * 0.5, rng.choice("abc"), "x", 0.1)
    lines = [line for _, line in sorted(timed, key=lambda t: t[0])]
    for k in range(len(lines) - 4000, 0, -61):
        # copies at the same event time that disagree (another label, other attributes), some 3,000
        # lines later: which comes first decides what is joined, and it is the earlier line
        ev = msgspec.json.decode(lines[k])
        other = {"label": "no" if ev.get("label") == "yes" else "yes"} if ev["type"] == "feedback" else \
            {"attributes": {"g": "b" if ev["attributes"]["g"] == "a" else "a", "h": "y"}}
        lines.insert(k + 3000 + rng.randrange(100), msgspec.json.encode({**ev, **other}))
    for k in range(0, len(lines), 97):  # a clock bug: copies fifty years ahead
        ev = msgspec.json.decode(lines[k])
        lines.insert(k + 1, msgspec.json.encode({**ev, "ts": ev["ts"] + 50 * 365.25 * DAY}))
    for k in range(300):
        bad = MALFORMED[k % len(MALFORMED)].replace(b'"bad-', f'"bad-{k}-'.encode())
        lines.insert(rng.randrange(len(lines)), bad)
    sub = {"type": "submission", "id": "s1", "ts": T0 + 3000, "model": "m", "submitter": "org-x", "group": "g = c",
           "claim": {"kind": "disparity", "metric": "error_rate", "min_gap": 0.05},
           "budget": {"max_outcomes": 2000, "deadline": "1d"}}
    lines.insert(len(lines) // 3, msgspec.json.encode(sub))
    lines.insert(len(lines) // 2, msgspec.json.encode({**sub, "id": "s2", "ts": T0 + 100, "group": "colour = red"}))
    lines.insert(len(lines) // 2, msgspec.json.encode({**sub, "id": "s3", "ts": T0 + 3000}))  # same hypothesis, tie
    end = gap + 600 * 0.5
    for i in range(5):  # beyond max_future of the stream, and no 32 events after them to vote: decided at the end
        lines.append(msgspec.json.encode({"type": "outcome", "id": f"end{i}", "ts": end + 1.5 * DAY + i, "model": "m",
                                          "attributes": {"g": "a"}, "output": "yes", "label": "yes"}))
    return lines


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def sort_everything_in_memory(engine: Engine, path: Path) -> list:
    """What replay did before runs: decode every line, screen in file order, sort stably by ts, feed."""
    engine.ordered = True
    decoded: list = []
    for line in path.read_bytes().split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            ev = engine.decoder.decode(line)
        except InvalidEvent as exc:
            engine.invalid[exc.reason] += 1
            continue
        decoded += engine.screen(ev)
    decoded += engine.screen_end()
    decoded.sort(key=lambda ev: ev.ts)
    alerts = []
    for n, item in enumerate(decoded, 1):
        alerts += engine.feed_event(item)
        if n % 4096 == 0:
            alerts += engine.release(item.ts)
    return alerts + engine.drain()


def outcome_of(engine: Engine, alerts: list) -> dict:
    return {"alerts": [a.to_dict() for a in alerts], "table": slice_table(engine), "invalid": dict(engine.invalid),
            "events": dict(engine.events), "outcomes": engine.outcomes, "watermark": engine.watermark,
            "verdicts": engine.bounty.take_records()}


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("replay") / "events.jsonl", stream())


@pytest.fixture(scope="module")
def expected(events_file: Path) -> dict:
    engine = Engine(_config())
    return outcome_of(engine, sort_everything_in_memory(engine, events_file))


def test_the_stream_has_what_could_tell_orders_apart(events_file: Path, expected: dict) -> None:
    kinds = {(a["kind"], a["state"]) for a in expected["alerts"]}
    assert ("disparity", "firing") in kinds and ("drift", "firing") in kinds
    invalid = expected["invalid"]
    assert invalid["future_timestamp"] > 250 and invalid["bad_submission"] == 1
    assert sum(invalid.values()) - invalid["future_timestamp"] > 250  # the malformed corpus (one line is valid here)
    assert [v["status"] for v in expected["verdicts"] if v.get("status") != "submitted"]  # the submission was tested
    assert expected["table"]["pipeline"]["join"]["duplicates"]["feedback"] > 100
    lines = events_file.read_bytes().splitlines()
    ts = [msgspec.json.decode(line)["ts"] for line in lines if line.startswith(b'{"type":"prediction"')]
    assert len(ts) - len(set(ts)) > 1000  # ties in event time
    # every prediction but the clock bug's went on, the segment after the gap too (held by the future
    # guard until the events after it voted it through)
    assert expected["events"]["prediction"] == sum(t < T0 + 10 * DAY for t in ts) > 12_000 + 600
    engine = Engine(_config())
    held_runs = []
    for line in lines:
        with contextlib.suppress(InvalidEvent):
            held_runs.append(len(engine.screen(engine.decoder.decode(line))))
    assert max(held_runs) > 16 and engine.future.held  # held events went on together, later; some wait to the end
    # pairs far apart in the file: with a buffer of 1,000 their prediction and feedback go to different runs
    first: dict[str, int] = {}
    split = 0
    for k, line in enumerate(lines):
        if line.startswith(b'{"type":"'):  # the generated events (the malformed corpus has spaces)
            ev = msgspec.json.decode(line)
            if ev["type"] == "prediction":
                first[ev["id"]] = k
            elif ev["type"] == "feedback" and k - first.get(ev["id"], k) > 2000:
                split += 1
    assert split > 1000


@pytest.mark.parametrize("sort_buffer, fan_in", [(10**9, 64), (1000, 64), (2500, 64), (1000, 4)])
def test_runs_give_exactly_the_in_memory_result(events_file: Path, expected: dict, monkeypatch, sort_buffer: int,
                                                fan_in: int) -> None:
    monkeypatch.setattr(replay_module, "FAN_IN", fan_in)  # 4: runs are merged into longer runs first, in levels
    spilled: list[int] = []
    spill = Runs.spill

    def counting(self: Runs, items) -> None:
        spilled.append(len(items))
        spill(self, items)

    monkeypatch.setattr(Runs, "spill", counting)
    engine = Engine(_through_runs(sort_buffer=sort_buffer))
    got = outcome_of(engine, replay(engine, [events_file], progress=False))
    assert got == expected
    if sort_buffer > 10**6:
        assert spilled == []
    else:
        # every item went through a run (the last buffer too), in runs of a buffer (and what one line let on)
        assert sum(spilled) == sum(expected["events"].values())
        assert len(spilled) >= 10 and max(spilled) <= sort_buffer + 64


def test_several_files_are_one_stream(events_file: Path, tmp_path: Path) -> None:
    """Files read one after the other, each spanning the whole time range: runs overlap throughout."""
    lines = events_file.read_bytes().splitlines()
    parts = [write(tmp_path / f"part{k}.jsonl", lines[k::3]) for k in range(3)]  # each spans the whole time range
    engine = Engine(_config(sort_buffer=1000))
    got = outcome_of(engine, replay(engine, [parts[2], parts[0], parts[1]], progress=False))
    reference = Engine(_config())
    joined = write(tmp_path / "joined.jsonl", lines[2::3] + lines[0::3] + lines[1::3])
    assert got == outcome_of(reference, sort_everything_in_memory(reference, joined))


def _usable_ts(line: bytes) -> float | None:
    """A line's event time, unless it has none usable (invalid, or a clock bug's copy far ahead)."""
    with contextlib.suppress(msgspec.DecodeError, TypeError, KeyError, AttributeError):
        ts = msgspec.json.decode(line)["ts"]
        if isinstance(ts, (int, float)) and ts < T0 + 30 * DAY:
            return ts
    return None


def nearly_in_order(lines: list[bytes], late: float = 40.0, seed: int = 7) -> list[bytes]:
    """``lines`` reordered by event time as they would arrive, up to ``late`` seconds out of order:
    a line without a usable time stays after the one before it, so the future guard and the
    decoder see what they saw."""
    rng = random.Random(seed)
    keyed, key = [], -math.inf
    for line in lines:
        if (ts := _usable_ts(line)) is not None:
            key = ts + rng.uniform(0, late)
        keyed.append((key, len(keyed), line))
    return [line for _, _, line in sorted(keyed)]


def _path_taken(monkeypatch) -> dict[str, int]:
    """Counts of the in-order attempts, of the engine resets after one gave up, and of runs written."""
    taken = {"in_order": 0, "reset": 0, "runs": 0}
    in_order, reset, spill = replay_module._in_order, Engine.reset, Runs.spill

    def counting_in_order(*args):
        taken["in_order"] += 1
        return in_order(*args)

    def counting_reset(self):
        taken["reset"] += 1
        reset(self)

    def counting_spill(self, items):
        taken["runs"] += 1
        spill(self, items)

    monkeypatch.setattr(replay_module, "_in_order", counting_in_order)
    monkeypatch.setattr(Engine, "reset", counting_reset)
    monkeypatch.setattr(Runs, "spill", counting_spill)
    return taken


@pytest.mark.parametrize("window", [400, 2500])
def test_input_in_order_within_the_window_is_fed_as_it_is_read(tmp_path: Path, monkeypatch, window: int) -> None:
    """Events at most 40 s (some 200 events) late, with ties, duplicates, invalid lines, held and
    rejected far-ahead times and submissions: no run, no reset, and exactly the in-memory sort."""
    path = write(tmp_path / "events.jsonl", nearly_in_order(stream(n=6000, seed=4)))
    reference = Engine(_config())
    order: list = []
    reference.feed_event = lambda item: (order.append(item), Engine.feed_event(reference, item))[1]
    want = outcome_of(reference, sort_everything_in_memory(reference, path))
    assert want["alerts"] and want["invalid"]["future_timestamp"] > 100 and want["verdicts"]
    taken = _path_taken(monkeypatch)
    engine = Engine(_config(sort_buffer=1000, in_order_window=window))
    fed: list = []
    engine.feed_events = lambda items: (fed.extend(items), Engine.feed_events(engine, items))[1]
    assert outcome_of(engine, replay(engine, [path], progress=False)) == want
    assert taken == {"in_order": 1, "reset": 0, "runs": 0}
    assert fed == order  # every event in the same place (not only the same results)
    top, late = -math.inf, 0  # and the file was out of order: the kept events were merged with later ones
    for line in path.read_bytes().splitlines():
        if (ts := _usable_ts(line)) is not None:
            late += ts < top
            top = max(top, ts)
    assert late > 1000


@pytest.mark.parametrize("where", [0.2, 0.5, 1.0])
def test_an_event_later_than_the_window_sends_the_replay_through_runs(tmp_path: Path, monkeypatch,
                                                                      where: float) -> None:
    """One prediction moved ``where`` of the way through the file (2,700 events or more behind its
    time): the in-order attempt gives up there, the engine forgets what it was fed, and runs give
    the in-memory sort."""
    lines = nearly_in_order(stream(n=6000, seed=5))
    first = next(k for k, line in enumerate(lines) if line.startswith(b'{"type":"prediction"'))
    lines.insert(max(first + 1, int(where * len(lines)) - 1), lines.pop(first))
    path = write(tmp_path / "events.jsonl", lines)
    reference = Engine(_config())
    want = outcome_of(reference, sort_everything_in_memory(reference, path))
    taken = _path_taken(monkeypatch)
    engine = Engine(_config(sort_buffer=1000, in_order_window=500))
    assert outcome_of(engine, replay(engine, [path], progress=False)) == want
    assert taken["in_order"] == 1 and taken["reset"] == 1 and taken["runs"] > 10


def test_an_engine_fed_before_is_not_reset(tmp_path: Path, monkeypatch) -> None:
    """Replay into an engine that already holds something: straight through runs (an in-order
    attempt that gave up would have to forget what the engine held)."""
    path = write(tmp_path / "events.jsonl", nearly_in_order(stream(n=2000, seed=6)))
    taken = _path_taken(monkeypatch)
    engine = Engine(_config(sort_buffer=1000))
    engine.feed_events([Event("prediction", "before", T0 - 10, "m", None, {"g": "a", "h": "x"}, "yes", None,
                              None, None)])
    replay(engine, [path], progress=False)
    assert taken["in_order"] == 0 and taken["reset"] == 0 and taken["runs"] > 0
    assert engine.events["prediction"] > 2000  # the one fed before counted too


def test_a_reset_engine_is_a_new_one(events_file: Path) -> None:
    cfg = _config()
    engine = Engine(cfg)
    engine.ordered = True
    assert engine.is_new
    sort_everything_in_memory(engine, events_file)
    assert not engine.is_new
    engine.reset()
    new = Engine(cfg, ordered=True)
    assert engine.is_new
    assert set(vars(engine)) == set(vars(new)) and engine.ordered
    assert outcome_of(engine, []) == outcome_of(new, [])
    assert (engine.joiner.pending, engine.held, len(engine.slices), engine.decoder.seen_models()) == (0, 0, 0, [])


def _typed(value):
    """A value with the type of every part, so 1 and 1.0 and True differ."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, *map(_typed, value)]
    return (type(value).__name__, value)


def test_runs_round_trip_events_and_submissions_exactly(tmp_path: Path) -> None:
    events = [
        Event("prediction", "p1", T0, "m", "t", {"g": "a", "long": "x" * 100}, "text é ✓", None, None, None),
        Event("feedback", "p1", T0 + 0.1, None, None, {}, None, "label", 2.0, 7.0),
        Event("outcome", "o1", T0 + 1, "m", None, {"g": "b"}, 1, True, None, None),
        Event("outcome", "o2", T0 + 1, "m", "", {}, 10**30, -(10**25), None, None),  # beyond 64 bits
        Event("outcome", "o3", T0 + 2, "m", "t", {}, 0.0, -0.0, 0.0, 1.0),
        Event("outcome", "o4", T0 + 2, "m", "t", {}, 2**64 - 1, -(2**63), 1e-300, 1e300),
        Event("outcome", "o5", T0 + 3, "m", "t", {}, False, 0, None, None),
    ]
    sub = parse_submission({"type": "submission", "id": "s", "ts": T0, "model": "m", "submitter": "x",
                            "group": {"any": [{"dim": "g", "in": ["a", "b"]}, {"dim": "h", "eq": "z"}]},
                            "claim": {"kind": "drift", "metric": "error_rate", "min_gap": 0},
                            "budget": {"max_outcomes": 100, "deadline": "2h"}},
                           dimensions=("g", "h"), metrics=("error_rate",))
    items = events[:3] + [sub] + events[3:]
    with Runs(tmp_path, block=2) as runs:
        runs.spill(items)
        back = list(runs.merged())
    assert back == items
    assert [_typed(list(x) if isinstance(x, Event) else x.to_dict()) for x in back] == \
           [_typed(list(x) if isinstance(x, Event) else x.to_dict()) for x in items]
    assert type(back[3]) is Submission and all(type(x) is Event for x in back[:3] + back[4:])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("times, slices", [
    ([[1, 2, 3], [3, 3, 4], [6, 7]], [2, 1, 2, 1, 2]),  # do not overlap (a tie at a boundary): whole blocks
    ([[1, 1], [], [1, 2]], [2, 2]),
    ([[1, 2, 5], [3, 4], [6]], [2, 2, 1, 1]),  # overlap, but each block comes before the next run's
    ([[1, 3, 5, 7], [2, 4, 6, 8]], [1] * 8),  # interleaved: one item at a time
    ([[1, 2, 2, 2], [2, 2, 3]], [2, 2, 2, 1]),  # ties go to the earlier run
])
def test_runs_are_merged_in_slices(tmp_path: Path, times, slices) -> None:
    runs_in = [[Event("outcome", f"r{r}-{k}", T0 + t, "m", None, {}, 1, 1, None, None) for k, t in enumerate(run)]
               for r, run in enumerate(times)]
    with Runs(tmp_path, block=2) as runs:
        for run in runs_in:
            if run:
                runs.spill(run)
        back = list(runs.merged_slices())
    everything = [ev for run in runs_in for ev in run]
    assert [ev for part in back for ev in part] == sorted(everything, key=lambda ev: ev.ts)  # a stable sort
    assert list(map(len, back)) == slices


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_merge_is_a_stable_merge(tmp_path: Path, seed: int) -> None:
    """Random runs with many ties, blocks of 1–5: the merge equals :func:`heapq.merge` (stable)."""
    rng = random.Random(seed)
    for trial in range(20):
        runs_in = [sorted((Event("outcome", f"r{r}-{k}", T0 + rng.randrange(30), "m", None, {}, 1, 1, None, None)
                           for k in range(rng.randrange(12))), key=lambda ev: ev.ts) for r in range(rng.randrange(1, 7))]
        with Runs(tmp_path / str(trial), block=rng.randrange(1, 6)) as runs:
            for run in runs_in:
                runs.spill(run)
            back = list(runs.merged())
        assert back == list(heapq.merge(*runs_in, key=lambda ev: ev.ts))


def test_runs_exist_while_replaying_and_are_deleted_after(tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", stream(n=4000, seed=2))
    spill = tmp_path / "spill"
    seen: list[list[Path]] = []
    engine = Engine(_through_runs(sort_buffer=1000, spill_directory=str(spill)))
    feed = engine.feed_events

    def watching(items):
        if not seen:
            seen.append(sorted(spill.glob("lastmile-replay-*/*")))
        return feed(items)

    engine.feed_events = watching  # type: ignore[method-assign]
    threshold = gc.get_threshold()
    replay(engine, [events], progress=False)
    assert len(seen[0]) > 4 and all(p.name.startswith("run-") for p in seen[0])
    assert list(spill.iterdir()) == []  # the directory and every run are gone
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == threshold  # the collector as it was

    # the engine raises half-way through the merge: the runs are deleted all the same
    engine = Engine(_through_runs(sort_buffer=1000, spill_directory=str(spill)))
    feed = engine.feed_events
    fed = []

    def failing(items):
        fed.extend(items)
        if len(fed) >= 3000:
            assert len(list(spill.glob("lastmile-replay-*/run-*"))) > 4
            raise RuntimeError("boom")
        return feed(items)

    engine.feed_events = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        replay(engine, [events], progress=False)
    assert list(spill.iterdir()) == [] and gc.get_threshold() == threshold
    if Path("/proc/self/fd").is_dir():  # and no run is left open
        assert not [fd for fd in Path("/proc/self/fd").iterdir() if "lastmile-replay" in str(fd.resolve())]
    assert gc.get_freeze_count() == 0

    # input that fits in one buffer: no file at all
    engine = Engine(_through_runs(spill_directory=str(spill)))
    feed = engine.feed_events
    seen.clear()
    engine.feed_events = watching  # type: ignore[method-assign]
    replay(engine, [events], progress=False)
    assert seen == [[]] and list(spill.iterdir()) == []


_SLOW_REPLAY = """
import sys, time
from monitor.engine import Engine
from monitor.replay import replay
from tests.conftest import ROOT, make_config
from tests.test_replay_stream import CFG
engine = Engine(make_config(**CFG, replay={"sort_buffer": 1000, "spill_directory": sys.argv[2], "in_order_window": 0}))
feed = engine.feed_events
def slow(items):
    time.sleep(0.001 * len(items))
    return feed(items)
engine.feed_events = slow
replay(engine, [sys.argv[1]], progress=False)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_runs_are_deleted_when_the_replay_is_terminated(tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", stream(n=4000, seed=3))
    spill = tmp_path / "spill"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_REPLAY, str(events), str(spill)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while len(list(spill.glob("lastmile-replay-*/run-*"))) < 5 and proc.poll() is None:
            assert time.monotonic() < deadline, "no runs were written"
            time.sleep(0.05)
        time.sleep(0.3)  # well into the merge
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert list(spill.iterdir()) == []


def _outcomes(path: Path, n: int) -> Path:
    """Outcome events one second apart, 20 s out of order at most; join.ttl 60s keeps the engine's own
    memory (ids remembered against duplicates) the same whatever the length."""
    rng = random.Random(n)
    timed = []
    for i in range(n):
        g = rng.choice("abc")
        timed.append((T0 + i + rng.uniform(0, 20), msgspec.json.encode(
            {"type": "outcome", "id": f"o{i}", "ts": T0 + i, "model": "m", "attributes": {"g": g, "h": "x"},
             "output": "yes", "label": "no" if rng.random() < 0.1 else "yes"})))
    return write(path, [line for _, line in sorted(timed, key=lambda t: t[0])])


def _peak(path: Path, **replay_settings) -> int:
    engine = Engine(make_config(**{**CFG, "join": {"ttl": "60s"}}, replay=replay_settings))
    gc.collect()
    tracemalloc.start()
    try:
        replay(engine, [path], progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("runs", [True, False])
def test_memory_does_not_grow_with_the_input(tmp_path: Path, monkeypatch, runs: bool) -> None:
    """10,000 and 40,000 events with a buffer of 1,000: the traced peak grows by less than a quarter
    (measured: a tenth, the merge's one block of 16 events per run), where holding the input would
    make it four times as large; and sorting the 40,000 in memory takes more than twice as much.
    Through runs, and read in order (the events are at most 20 late: the in-order path holds)."""
    spill = str(tmp_path / "spill")
    if runs:
        bounded = {"sort_buffer": 1000, "spill_directory": spill, "in_order_window": 0}
        everything = {"sort_buffer": 10**9, "in_order_window": 0}
    else:
        monkeypatch.setattr(Runs, "spill", lambda *args: pytest.fail("the in-order path wrote a run"))
        bounded, everything = {"in_order_window": 500}, {"in_order_window": 10**9}
    small, large = _outcomes(tmp_path / "small.jsonl", 10_000), _outcomes(tmp_path / "large.jsonl", 40_000)
    replay(Engine(make_config(**CFG, replay=bounded)), [small], progress=False)  # compile and warm every path first
    peak_small = _peak(small, **bounded)
    peak_large = _peak(large, **bounded)
    in_memory = _peak(large, **everything)
    assert peak_large < 1.25 * peak_small, (peak_small, peak_large)
    assert in_memory > 2 * peak_large, (peak_large, in_memory)


def test_a_buffer_too_small_to_be_useful_is_refused() -> None:
    with pytest.raises(ConfigError, match="replay.sort_buffer"):
        make_config(replay={"sort_buffer": 999})
    assert make_config().replay.sort_buffer == 200_000 and make_config().replay.spill_directory is None
    with pytest.raises(ConfigError, match="replay.in_order_window"):
        make_config(replay={"in_order_window": -1})
    assert make_config().replay.in_order_window == 4096
