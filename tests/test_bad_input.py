"""No bad event costs a valid one: rejected before the join, counted by reason, moving no watermark."""

from __future__ import annotations

import random

import msgspec
import pytest

from monitor.config import EventsConfig, MetricsConfig, load_config
from monitor.engine import Engine
from monitor.events import Decoder, InvalidEvent
from monitor.future import FutureGuard
from monitor.replay import replay
from monitor.scoring import Scorer
from monitor.simulate import SpeechScenario
from monitor.table import slice_table
from tests.conftest import ROOT, make_config
from tests.poison import FAR, poison

T0 = 1795514400.0


def _reason(metrics: list[str], raw: dict) -> str | None:
    d = Decoder(EventsConfig(), unscorable=Scorer(MetricsConfig(names=metrics)).unscorable)
    try:
        d.decode(msgspec.json.encode({"id": "a", "ts": T0, "model": "m", **raw}))
    except InvalidEvent as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("metrics, raw, expected", [
    (["wer"], {"type": "feedback", "label": 7}, "unscorable"),
    (["wer"], {"type": "feedback", "label": True}, "unscorable"),
    (["wer"], {"type": "prediction", "output": 0.5}, "unscorable"),
    (["wer"], {"type": "feedback", "label": "seven"}, None),
    (["cer", "wer"], {"type": "outcome", "output": 3, "errors": 1, "units": 4}, None),  # self-scored: no text needed
    (["abs_error"], {"type": "feedback", "label": "n/a"}, "unscorable"),
    (["abs_error"], {"type": "feedback", "label": False}, "unscorable"),
    (["abs_error"], {"type": "feedback", "label": "2.5"}, None),
    (["error_rate", "fpr"], {"type": "feedback", "label": "fraud"}, None),
    (["error_rate"], {"type": "prediction", "output": 1}, None),
])
def test_what_the_metrics_cannot_score_is_rejected_when_decoded(metrics, raw, expected) -> None:
    assert _reason(metrics, raw) == expected


def _ev(i: int, ts: float) -> bytes:
    return msgspec.json.encode({"type": "outcome", "id": f"e{i}", "ts": ts, "model": "m", "output": 1, "label": 1})


def test_a_lone_far_future_event_is_rejected_and_moves_no_watermark() -> None:
    engine = Engine(make_config(join={"ttl": "1h"}))
    for i in range(100):
        engine.feed(_ev(i, T0 + i))
    engine.feed(msgspec.json.encode({"type": "prediction", "id": "p", "ts": T0 + 100, "model": "m", "output": 1}))
    engine.feed(_ev(999, T0 + FAR))
    assert engine.watermark == T0 + 100 and engine.joiner.pending == 1  # nothing expired
    assert len(engine.future.held) == 1
    engine.feed(msgspec.json.encode({"type": "feedback", "id": "p", "ts": T0 + 101, "label": 1}))
    engine.drain()
    assert engine.invalid == {"future_timestamp": 1} and engine.outcomes == 101


def _judge(guard: FutureGuard, times: list[float], start: int = 0) -> tuple[list[str], int]:
    """Ids that went on, in order, and how many were rejected (as the engine screens)."""
    gone, rejected = [], 0
    for i, ts in enumerate(times, start):
        if not guard.held and ts <= guard.bound:
            guard.note(ts)
            gone.append(f"e{i}")
            continue
        got, r = guard.judge(_decoded(i, ts))
        gone += [e.id for e in got]
        rejected += r
    return gone, rejected


def _judge_all(guard: FutureGuard, times: list[float]) -> tuple[list[str], int]:
    gone, rejected = _judge(guard, times)
    got, r = guard.drain()
    return gone + [e.id for e in got], rejected + r


def test_the_stream_decides_what_is_far_ahead_sparse_gaps_and_bad_first_events_included() -> None:
    day = 86400.0
    rng = random.Random(4)
    # a sparse stream (20 events a day, well under one vote window a day) with a 10-day gap
    sparse = sorted(T0 + rng.uniform(0, 30 * day) for _ in range(600))
    sparse = [t + (10 * day if t > T0 + 15 * day else 0) for t in sparse]
    gone, rejected = _judge_all(FutureGuard(day), sparse)
    assert rejected == 0 and sorted(gone, key=lambda x: int(x[1:])) == [f"e{i}" for i in range(600)]
    # a clock bug on 30% of the events, all within an hour of each other: outvoted, every one
    times = [T0 + FAR + i if i % 10 < 3 else T0 + i for i in range(2000)]
    gone, rejected = _judge_all(FutureGuard(day), times)
    assert rejected == 600 and len(gone) == 1400 and all(int(g[1:]) % 10 >= 3 for g in gone)
    # a bad first event is judged like any other
    gone, rejected = _judge_all(FutureGuard(day), [T0 + FAR] + [T0 + i for i in range(100)])
    assert rejected == 1 and "e0" not in gone and len(gone) == 100
    # a file that really jumps forward mid-way: everything goes on, in arrival order
    times = [T0 + i for i in range(500)] + [T0 + 30 * day + i for i in range(500)]
    gone, rejected = _judge_all(FutureGuard(day), times)
    assert rejected == 0 and gone == [f"e{i}" for i in range(1000)]


def test_the_quarantine_is_checkpointed_as_plain_data() -> None:
    times = [T0 + FAR + i if i % 10 < 3 else T0 + i for i in range(200)]
    expected = _judge_all(FutureGuard(86400.0), times)
    first = FutureGuard(86400.0)
    gone, rejected = _judge(first, times[:105])
    assert first.held
    again = FutureGuard(86400.0)
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(first.state())))  # as checkpoints store it
    rest, r = _judge(again, times[105:], start=105)
    got, r2 = again.drain()
    assert (gone + rest + [e.id for e in got], rejected + r + r2) == expected


def _decoded(i: int, ts: float):
    return Decoder(EventsConfig()).decode(_ev(i, ts))


def _table(engine: Engine) -> list[dict]:
    return slice_table(engine)["slices"]


@pytest.mark.parametrize("ordered", [True, False])
def test_a_poisoned_file_gives_the_clean_files_slice_table(tmp_path, ordered: bool) -> None:
    """Poisoned feedback for real ids (before the genuine one), copies of real events fifty years
    ahead and the whole malformed corpus: the slice table and alerts equal the clean file's, in
    event-time order and in arrival order (as the daemon reads)."""
    clean = list(SpeechScenario(outcomes=20_000, seed=5, malformed=0.0).events())
    mixed, added = poison(clean, seed=6)
    assert added["unscorable"] > 100 and added["future_timestamp"] > 50 and added["corpus"] > 50
    results = []
    for name, lines in (("clean", clean), ("mixed", mixed)):
        (tmp_path / name).write_bytes(b"\n".join(lines) + b"\n")
        cfg = load_config(ROOT / "config" / "asr.yaml",
                          environ={"LASTMILE__REPLAY__ORDER_BY_EVENT_TIME": str(ordered).lower()})
        engine = Engine(cfg)
        alerts = replay(engine, [tmp_path / name], progress=False)
        results.append((engine, [a.to_dict() for a in alerts]))
    (clean_e, clean_a), (mixed_e, mixed_a) = results
    assert _table(mixed_e) == _table(clean_e)
    assert mixed_a == clean_a
    assert mixed_e.outcomes == clean_e.outcomes and mixed_e.watermark == clean_e.watermark
    assert mixed_e.invalid["unscorable"] >= added["unscorable"]  # the corpus has unscorable lines too
    assert mixed_e.invalid["future_timestamp"] == added["future_timestamp"]
    assert sum(mixed_e.invalid.values()) == sum(added.values())
