"""No bad event costs a valid one: rejected before the join, counted by reason, moving no watermark."""

from __future__ import annotations

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
    assert engine.future.held == 1
    engine.feed(msgspec.json.encode({"type": "feedback", "id": "p", "ts": T0 + 101, "label": 1}))
    engine.drain()
    assert engine.invalid == {"future_timestamp": 1} and engine.outcomes == 101


def test_a_genuine_jump_forward_is_let_through_once_the_stream_has_moved() -> None:
    guard = FutureGuard(max_future=3600.0, k=4, quorum=8)
    for i in range(10):
        guard.accept(T0 + i)
    assert guard.bound == T0 + 6 + 3600
    for i in range(4):  # a day later: held until most of the last eight judged agree
        got, rejected = guard.hold(_decoded(i, T0 + 86400 + i))
        assert got == [] and rejected == 0
    got, _ = guard.hold(_decoded(4, T0 + 86400 + 4))
    assert [e.id for e in got] == [f"e{i}" for i in range(5)]  # in arrival order
    assert guard.bound == T0 + 86401 + 3600 and guard.held == 0
    # a clock bug interleaved with the stream never moves it, however many events it stamps
    rejected_total = 0
    for i in range(300):
        if i % 3 == 0:
            got, rejected = guard.hold(_decoded(100 + i, T0 + FAR + i))  # all within the hour
            assert got == []
            rejected_total += rejected
        else:
            guard.accept(T0 + 86405 + i)
    assert guard.held == 16 and rejected_total == 100 - 16
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(guard.state()))  # as checkpoints store it
    again = FutureGuard(max_future=3600.0, k=4, quorum=8)
    again.restore(state)
    assert (again.bound, again.held, again.seen) == (guard.bound, guard.held, guard.seen) and again.drain() == 16


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
