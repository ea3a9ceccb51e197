"""Joined outcomes held until the event-time watermark passes them, taken in (ts, id) order."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

_Entry = tuple[float, str, Any]  # (ts, id, outcome): compared as the tuple, as a heap of them would be


class HeldOutcomes:
    """Outcomes waiting for the watermark: what :meth:`take_before` and :meth:`pop` give is
    exactly the order a heap of ``(ts, id, outcome)`` entries would pop.

    A sorted list rather than a heap, because outcomes arrive nearly in order (replay feeds them
    by event time, the daemon's partitions are each in order): outcomes added since the last take
    are sorted among themselves (linear for a run already in order) and appended, or merged with
    the entries held when the two overlap (Timsort merges two sorted runs in linear time); a
    release is a prefix, found by bisection. A heap took a push and a pop, each ~log n
    comparisons, per outcome.
    """

    def __init__(self) -> None:
        self._items: list[_Entry] = []  # sorted; entries before _start are taken
        self._start = 0
        self._new: list[_Entry] = []  # added since the last take, in arrival order

    def __len__(self) -> int:
        return len(self._items) - self._start + len(self._new)

    def add(self, outcomes: Iterable[Any]) -> None:
        self._new += [(o.ts, o.id, o) for o in outcomes]

    def _settle(self) -> list[_Entry]:
        items, new = self._items, self._new
        if new:
            new.sort()
            if self._start:
                del items[:self._start]
                self._start = 0
            merge = bool(items) and new[0] < items[-1]
            items += new
            if merge:
                items.sort()
            self._new = []
        return items

    def take_before(self, upto: float) -> list[Any]:
        """The outcomes with event time before ``upto``, in order, no longer held."""
        items = self._settle()
        start = self._start
        end = bisect_left(items, (upto,), start)  # ((upto,) sorts before every entry at upto)
        if end == start:
            return []
        taken = [entry[2] for entry in items[start:end]]
        if end == len(items):
            items.clear()
            self._start = 0
        elif end > len(items) // 2:
            del items[:end]
            self._start = 0
        else:
            self._start = end
        return taken

    def first_ts(self) -> float:
        """The earliest event time held (infinity: nothing is)."""
        items = self._settle()
        return items[self._start][0] if self._start < len(items) else math.inf

    def pop(self) -> Any:
        """The first outcome (there is one)."""
        items = self._settle()
        entry = items[self._start]
        self._start += 1
        if self._start == len(items):
            items.clear()
            self._start = 0
        return entry[2]

    def outcomes(self) -> list[Any]:
        """Everything held, in order (for a checkpoint)."""
        items = self._settle()
        return [entry[2] for entry in items[self._start:]]

    def restore(self, outcomes: Iterable[Any]) -> None:
        self._items, self._start, self._new = [], 0, []
        self.add(outcomes)
