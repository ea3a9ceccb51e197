"""Joining predictions with their delayed feedback by id, in either arrival order.

Time is event time: the watermark is the largest event timestamp seen so far, and an entry
pending for longer than the TTL behind it expires (a prediction that never got a label is
counted as ``expired_unlabelled``; feedback whose prediction never came, ``expired_orphan``).
Capacity is bounded: beyond ``max_pending`` the oldest entry is evicted and counted. Ids
already joined are remembered for one TTL so a repeated prediction or feedback is counted as
a duplicate instead of being joined twice.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple
from collections.abc import Iterator

import msgspec

from monitor.events import Event

#: label delay histogram buckets (seconds): 1s … 30d, then +Inf
LABEL_DELAY_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0, 30 * 86400.0)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Outcome(NamedTuple):
    """A prediction with its ground truth: what every metric is computed from."""

    id: str
    model: str
    ts: float  # event time the outcome became known (the later of the two events)
    tenant: str | None
    attributes: dict[str, str]
    output: object
    label: object
    errors: float | None
    units: float | None
    #: event time of the prediction (submissions count only outcomes predicted after them)
    pred_ts: float | None = None


@dataclass
class JoinStats:
    joined: int = 0
    outcomes_direct: int = 0
    duplicates: dict[str, int] = field(default_factory=lambda: {"prediction": 0, "feedback": 0, "outcome": 0})
    expired_unlabelled: int = 0
    expired_orphan: int = 0
    evicted: int = 0
    label_delay_buckets: list[int] = field(default_factory=lambda: [0] * (len(LABEL_DELAY_BUCKETS) + 1))
    label_delay_sum: float = 0.0
    label_delay_count: int = 0

    def observe_delay(self, delay: float) -> None:
        delay = max(0.0, delay)
        self.label_delay_sum += delay
        self.label_delay_count += 1
        self.label_delay_buckets[bisect_left(LABEL_DELAY_BUCKETS, delay)] += 1


def merge(prediction: Event, feedback: Event) -> Outcome:
    """Feedback may add attributes (e.g. self-reported ones); it never overrides the prediction's."""
    attrs = prediction.attributes
    if feedback.attributes:
        attrs = {**feedback.attributes, **prediction.attributes}
    return Outcome(
        prediction.id,
        prediction.model or feedback.model or "",
        max(prediction.ts, feedback.ts),
        prediction.tenant if prediction.tenant is not None else feedback.tenant,
        attrs,
        prediction.output,
        feedback.label,
        feedback.errors,
        feedback.units,
        prediction.ts,
    )


class Joiner:
    def __init__(self, ttl: float, max_pending: int):
        self.ttl = ttl
        self.max_pending = max_pending
        self.stats = JoinStats()
        self.watermark = float("-inf")
        # insertion-ordered: the front is (nearly) the oldest, so expiry pops from the front
        self._pending: dict[str, Event] = {}
        self._done: dict[str, float] = {}
        self._next_expiry = float("-inf")  # watermark beyond which the front entries may expire

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, ev: Event) -> Outcome | None:
        """Feed one event; returns the joined outcome when this event completes one."""
        if ev.ts > self.watermark:
            self.watermark = ev.ts
            if ev.ts > self._next_expiry:
                self._expire()
        eid = ev.id
        if eid in self._done:
            self.stats.duplicates[ev.kind] += 1
            return None
        if ev.kind == "outcome":
            if eid in self._pending:
                self.stats.duplicates["outcome"] += 1
                return None
            self._remember(eid, ev.ts)
            self.stats.outcomes_direct += 1
            return Outcome(eid, ev.model or "", ev.ts, ev.tenant, ev.attributes, ev.output, ev.label, ev.errors, ev.units,
                           ev.ts)
        other = self._pending.get(eid)
        if other is None:
            if len(self._pending) >= self.max_pending:
                self._pending.pop(next(iter(self._pending)))
                self.stats.evicted += 1
            self._pending[eid] = ev
            if ev.ts + self.ttl < self._next_expiry:
                self._next_expiry = ev.ts + self.ttl
            return None
        if other.kind == ev.kind:
            self.stats.duplicates[ev.kind] += 1
            return None
        del self._pending[eid]
        prediction, feedback = (other, ev) if ev.kind == "feedback" else (ev, other)
        self._remember(eid, max(ev.ts, other.ts))
        self.stats.joined += 1
        self.stats.observe_delay(feedback.ts - prediction.ts)
        return merge(prediction, feedback)

    def _remember(self, eid: str, ts: float) -> None:
        if len(self._done) >= self.max_pending:
            self._done.pop(next(iter(self._done)))
        self._done[eid] = ts
        if ts + self.ttl < self._next_expiry:
            self._next_expiry = ts + self.ttl

    def _expire(self) -> None:
        horizon = self.watermark - self.ttl
        pending, done = self._pending, self._done
        next_expiry = float("inf")
        while pending:
            eid = next(iter(pending))
            ev = pending[eid]
            if ev.ts >= horizon:
                next_expiry = ev.ts + self.ttl
                break
            del pending[eid]
            if ev.kind == "prediction":
                self.stats.expired_unlabelled += 1
            else:
                self.stats.expired_orphan += 1
        while done:
            eid = next(iter(done))
            if done[eid] >= horizon:
                next_expiry = min(next_expiry, done[eid] + self.ttl)
                break
            del done[eid]
        # entries inserted later are checked when the watermark next passes this point
        self._next_expiry = next_expiry if next_expiry != float("inf") else self.watermark

    # ---- checkpointing: plain data only (lists, dicts, numbers, strings) ----------------------
    def state(self) -> dict[str, Any]:
        # pending events and joined ids are msgpack-encoded here, in C, in insertion order (which
        # expiry relies on); millions of them would be slow as Python lists
        return {"watermark": self.watermark, "next_expiry": self._next_expiry,
                "pending": msgspec.msgpack.encode(list(self._pending.values())),
                "done": msgspec.msgpack.encode(self._done), "stats": asdict(self.stats)}

    def restore(self, state: dict[str, Any]) -> None:
        self.watermark = state["watermark"]
        self._next_expiry = state["next_expiry"]
        with _gc_paused():  # millions of new containers: the cyclic GC would rescan them over and over
            events = msgspec.msgpack.decode(state["pending"], type=list[Event])
            self._pending = {ev.id: ev for ev in events}
            self._done = msgspec.msgpack.decode(state["done"], type=dict[str, float])
        self.stats = JoinStats(**state["stats"])
