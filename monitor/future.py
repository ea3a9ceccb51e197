"""Event times far ahead of the stream: a producer's clock bug must not move the watermark.

One event stamped decades ahead would otherwise become the watermark: every pending
prediction would expire at once and the partition's event-time horizon would stall. An event
further ahead than ``events.max_future`` is rejected as ``future_timestamp`` instead, and moves
nothing. Ahead of what:

* **the wall clock** in the daemon: no producer can legitimately stamp an event a day from now;
* **a robust watermark** in replay, where the wall clock means nothing: the ``k``-th largest
  accepted event time, which one bad event (or ``k - 1`` of them) cannot move.

A stream can also jump forward for real (a replay file with a gap of days). Events beyond the
bound therefore wait in a small quarantine, judged in arrival order. When most of the last
``quorum`` events arrived beyond the bound and half a quorum of them agree (lie within
``max_future`` of each other), the stream has moved: they are let through, in arrival order,
and the watermark moves with them. A clock bug does not move the stream (its events are
interleaved with the rest, however many there are in absolute terms): its events are rejected
when the quarantine overflows (oldest first) or the input ends.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import msgspec

from monitor.events import Event

K_LARGEST = 32  # the robust watermark: this many accepted event times must be past a point
QUORUM = 256  # events beyond the bound that agree with each other: a genuine jump forward


class FutureGuard:
    def __init__(self, max_future: float, wall_clock: Callable[[], float] | None = None,
                 k: int = K_LARGEST, quorum: int = QUORUM):
        self.max_future = max_future
        self.wall_clock = wall_clock
        self.k, self.quorum = k, quorum
        self._largest: list[float] = []  # min-heap of the k largest accepted event times
        self.bound = float("inf")  # events later than this are held (robust mode)
        self.seen = 0  # events judged (accepted or held), for arrival-order shares
        self._held: list[Event] = []  # quarantine, in arrival order
        self._seqs: list[int] = []  # when each held event arrived (``seen`` at the time)

    def wall_bound(self) -> float:
        """The daemon's bound for a batch: the wall clock plus ``max_future``."""
        assert self.wall_clock is not None
        return self.wall_clock() + self.max_future

    def accept(self, ts: float) -> None:
        """An accepted event time (robust mode): the watermark is the k-th largest of them."""
        self.seen += 1
        self._note(ts)

    def _note(self, ts: float) -> None:
        largest = self._largest
        if len(largest) < self.k:
            heapq.heappush(largest, ts)
        elif ts > largest[0]:
            heapq.heapreplace(largest, ts)
        else:
            return
        # until k events were seen, the earliest accepted one is the reference
        self.bound = largest[0] + self.max_future

    def hold(self, ev: Event) -> tuple[list[Event], int]:
        """An event beyond the bound: quarantined. Returns the events let through now (a jump the
        stream really made, in arrival order, already taken into the watermark) and how many held
        events were rejected to keep the quarantine bounded."""
        self.seen += 1
        held, seqs, q = self._held, self._seqs, self.quorum
        held.append(ev)
        seqs.append(self.seen)
        rejected = 0
        if len(held) > 2 * q:
            held.pop(0)
            seqs.pop(0)
            rejected = 1
        recent = len(seqs) - bisect_right(seqs, self.seen - q)  # held among the last q judged
        if 2 * recent <= q:
            return [], rejected
        times = sorted(e.ts for e in held[len(held) - recent:])
        lo, run = 0, None
        for hi, t in enumerate(times):  # a run of them within max_future of each other
            while t - times[lo] > self.max_future:
                lo += 1
            if 2 * (hi - lo + 1) > q:
                run = (times[lo], times[lo] + self.max_future)
                break
        if run is None:
            return [], rejected
        in_run = [run[0] <= e.ts <= run[1] for e in held]
        for e, r in zip(held, in_run):
            if r:
                self._note(e.ts)
        bound = self.bound  # moved by the run: other held events may now be within it
        go = [r or e.ts <= bound for e, r in zip(held, in_run)]
        released = [e for e, g in zip(held, go) if g]
        for e, r, g in zip(held, in_run, go):
            if g and not r:
                self._note(e.ts)
        self._seqs = [s for s, g in zip(seqs, go) if not g]
        self._held = [e for e, g in zip(held, go) if not g]
        return released, rejected

    def drain(self) -> int:
        """End of input: quarantined events the stream never followed are rejected."""
        rejected, self._held, self._seqs = len(self._held), [], []
        return rejected

    @property
    def held(self) -> int:
        return len(self._held)

    # ---- checkpointing: plain data ------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"largest": sorted(self._largest), "seen": self.seen, "seqs": list(self._seqs),
                "held": msgspec.msgpack.encode(self._held)}

    def restore(self, state: dict[str, Any]) -> None:
        self._largest = list(state["largest"])
        heapq.heapify(self._largest)
        self.bound = self._largest[0] + self.max_future if self._largest else float("inf")
        self.seen, self._seqs = state["seen"], list(state["seqs"])
        self._held = msgspec.msgpack.decode(state["held"], type=list[Event])
