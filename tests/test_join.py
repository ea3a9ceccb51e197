from __future__ import annotations

from monitor.events import Event
from monitor.join import Joiner


def pred(i: str, ts: float, **attrs: str) -> Event:
    return Event("prediction", i, ts, "m", "t1", dict(attrs), "yes", None, None, None)


def fb(i: str, ts: float, label: str = "yes", **attrs: str) -> Event:
    return Event("feedback", i, ts, None, None, dict(attrs), None, label, None, None)


def test_either_arrival_order() -> None:
    j = Joiner(ttl=100, max_pending=10)
    assert j.add(pred("a", 1)) is None
    out = j.add(fb("a", 5))
    assert out is not None and out.ts == 5 and out.label == "yes"
    assert j.add(fb("b", 6)) is None  # feedback first
    out = j.add(pred("b", 2))
    assert out is not None and out.id == "b" and out.ts == 6
    assert j.stats.joined == 2 and j.pending == 0
    assert j.stats.label_delay_count == 2 and j.stats.label_delay_sum == 8


def test_feedback_adds_attributes_but_never_overrides() -> None:
    j = Joiner(ttl=100, max_pending=10)
    j.add(pred("a", 1, accent="scottish"))
    out = j.add(fb("a", 2, accent="irish", gender="female"))
    assert out.attributes == {"accent": "scottish", "gender": "female"}


def test_ttl_expiry_is_by_event_time() -> None:
    j = Joiner(ttl=10, max_pending=10)
    j.add(pred("a", 0))
    j.add(fb("orphan", 1))
    j.add(pred("b", 5))
    assert j.add(fb("a", 10)) is not None  # delay == ttl still joins
    j.add(pred("c", 16))  # watermark 16: b (5) is still within 10s? 16 - 10 = 6 > 5 → b expires
    assert j.stats.expired_unlabelled == 1 and j.stats.expired_orphan == 1
    assert j.add(fb("b", 16.5)) is None  # too late: waits as orphan feedback
    assert j.pending == 2


def test_capacity_evicts_oldest_and_counts() -> None:
    j = Joiner(ttl=1e9, max_pending=3)
    for i in range(5):
        j.add(pred(str(i), i))
    assert j.pending == 3 and j.stats.evicted == 2
    assert j.add(fb("0", 9)) is None  # evicted: cannot join
    assert j.add(fb("4", 9)) is not None


def test_duplicates_are_counted_and_ignored() -> None:
    j = Joiner(ttl=100, max_pending=10)
    j.add(pred("a", 1))
    j.add(pred("a", 1.5))
    assert j.stats.duplicates["prediction"] == 1
    assert j.add(fb("a", 2)) is not None
    assert j.add(fb("a", 3)) is None  # feedback delivered twice
    assert j.add(pred("a", 1)) is None  # prediction replayed after the join
    assert j.stats.duplicates == {"prediction": 2, "feedback": 1, "outcome": 0}
    o = Event("outcome", "z", 4, "m", None, {}, "x", "x", None, None)
    assert j.add(o) is not None and j.add(o) is None
    assert j.stats.duplicates["outcome"] == 1
