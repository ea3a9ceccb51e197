"""Event times far ahead of the stream: a producer's clock bug must not move the watermark.

One event stamped decades ahead would otherwise become the watermark: every pending
prediction would expire at once and the partition's event-time horizon would stall. An event
further ahead than ``events.max_future`` is rejected as ``future_timestamp`` instead, and moves
nothing. Ahead of what:

* **the wall clock** in the daemon: no producer can legitimately stamp an event a day from now;
* **the stream** in replay, where the wall clock means nothing: the latest event time accepted
  so far. Events beyond it wait in a small quarantine, and the events that arrive next decide:
  each of the following ``VOTES`` events that is not older than ``ts - max_future`` says the
  stream has moved there. A majority lets the event through (a file with a gap of days, a sparse
  stream), and the watermark moves with it; otherwise it is rejected. A clock bug is outvoted by
  the rest of the stream, however many events it stamps, as long as it does not carry most of
  the traffic. The first ``WARMUP`` events set the starting point by their median (so a bad first
  event is judged like any other). Decisions depend only on the order of events.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import msgspec

from monitor.events import Event

VOTES = 32  # events after a held one that decide whether the stream moved to it
WARMUP = 16  # events whose median sets the starting point


class FutureGuard:
    def __init__(self, max_future: float, wall_clock: Callable[[], float] | None = None,
                 votes: int = VOTES, warmup: int = WARMUP):
        self.max_future = max_future
        self.wall_clock = wall_clock
        self.votes, self.warmup = votes, warmup
        self.top = float("-inf")  # latest accepted event time
        self.bound = float("-inf")  # later events are held (-inf while warming up: all are)
        self.seen = 0  # events judged
        #: quarantine, in arrival order: [event, votes for, votes against]
        self.held: list[list[Any]] = []

    def wall_bound(self) -> float:
        """The daemon's bound for a batch: the wall clock plus ``max_future``."""
        assert self.wall_clock is not None
        return self.wall_clock() + self.max_future

    def note(self, ts: float) -> None:
        """An accepted event time, in the common case (nothing held, ``ts <= bound``)."""
        self.seen += 1
        if ts > self.top:
            self.top = ts
            self.bound = ts + self.max_future

    def judge(self, ev: Event) -> tuple[list[Event], int]:
        """Any event while something is held or beyond the bound. Returns the events that go
        on now (``ev`` itself if accepted, and any held ones the votes let through, in arrival
        order) and how many held events were rejected."""
        self.seen += 1
        gone: list[Event] = []
        rejected = 0
        for entry in self.held:  # ev votes on every held event
            entry[1 if ev.ts >= entry[0].ts - self.max_future else 2] += 1
        if ev.ts <= self.bound:
            self._accept(ev.ts)
            gone.append(ev)
        else:
            self.held.append([ev, 0, 0])
        if self.bound == float("-inf"):
            if len(self.held) >= self.warmup:
                gone += self._start()
            return gone, rejected
        keep = []
        for entry in self.held:
            e, yes, no = entry
            if yes + no < self.votes:
                keep.append(entry)
            elif 2 * yes > self.votes:
                self._accept(e.ts)
                gone.append(e)
            else:
                rejected += 1
        self.held = keep
        gone += self._within()
        return gone, rejected

    def _accept(self, ts: float) -> None:
        if ts > self.top:
            self.top = ts
            self.bound = ts + self.max_future

    def _start(self) -> list[Event]:
        """End of the warm-up: the median of the held events is the starting point."""
        median = statistics.median_low([e.ts for e, _, _ in self.held])
        self.top, self.bound = median, median + self.max_future
        return self._within()

    def _within(self) -> list[Event]:
        """Held events the (moved) bound now covers go on, in arrival order."""
        gone: list[Event] = []
        while True:
            ok = [entry for entry in self.held if entry[0].ts <= self.bound]
            if not ok:
                return gone
            self.held = [entry for entry in self.held if entry[0].ts > self.bound]
            for e, _, _ in ok:
                self._accept(e.ts)
                gone.append(e)

    def drain(self) -> tuple[list[Event], int]:
        """End of input: held events go on if the votes they got say so (or, with none, if the
        stream reached within ``max_future`` of them); the rest are rejected."""
        gone: list[Event] = []
        if self.bound == float("-inf") and self.held:
            gone += self._start()
        rejected = 0
        for e, yes, no in self.held:
            if yes > no or (yes == no == 0 and e.ts <= self.top + self.max_future):
                self._accept(e.ts)
                gone.append(e)
            else:
                rejected += 1
        self.held = []
        return gone, rejected

    # ---- checkpointing: plain data ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"top": self.top, "bound": self.bound, "seen": self.seen,
                "held": msgspec.msgpack.encode([e for e, _, _ in self.held]),
                "votes": [[yes, no] for _, yes, no in self.held]}

    def restore(self, state: dict[str, Any]) -> None:
        self.top, self.bound, self.seen = state["top"], state["bound"], state["seen"]
        events = msgspec.msgpack.decode(state["held"], type=list[Event])
        self.held = [[e, yes, no] for e, (yes, no) in zip(events, state["votes"])]
