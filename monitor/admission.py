"""Which dimension values are tracked: admission by frequency, in bounded memory.

A model tracks at most ``slices.max_values_per_dimension`` values of each dimension. While
there is room, a value is tracked when first seen. Once the cap is full, values that are not
tracked are counted in a :class:`SpaceSaving` summary of ``admission.candidates`` counters
(everything else about them maps to ``__other__``); a candidate whose *guaranteed* count
reaches ``admission.min_count`` and twice the count of the weakest tracked value takes that
value's place. The weakest value is then retired (its slices are recycled) and counted. All
counts fade by half every ``admission.half_life`` outcomes of the model, so a condition that
becomes frequent late is tracked however full the cap was, and values that stop arriving
make room. A value whose slices have an alert firing is never retired.

Why not ``river.sketch.HeavyHitters`` (lossy counting with a fading factor): its constructor
insists on ``support <= epsilon`` (the opposite of the algorithm's ``epsilon << support``, so
its "no false negatives above support" guarantee cannot be configured), its memory is bounded
only as ``O(1/epsilon · log(epsilon·n))`` rather than by a hard count, and its state lives in
private attributes keyed by arbitrary objects. Space-Saving is a hard bound with a stated
error, its state is plain data, and its choices are deterministic, so a checkpoint restores
the same decisions a run without interruption makes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class SpaceSaving:
    """The Space-Saving summary (Metwally, Agrawal & El Abbadi, 2005), with fading.

    At most ``capacity`` counters. A value that is not held takes the counter of the smallest
    one when all are in use, and inherits its count as its ``error``: ``count - error`` never
    exceeds the value's (faded) frequency since it entered, and every value more frequent than
    ``total / capacity`` is always held. Ties go to the counter taken longest ago, so the
    summary's choices depend only on its state.

    >>> s = SpaceSaving(2)
    >>> [s.add(v) for v in "aab"], s.add("c"), sorted(s.state()["entries"])
    ([1.0, 2.0, 1.0], 1.0, [['a', 2.0, 0.0, 1], ['c', 2.0, 1.0, 3]])
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: dict[str, list[float]] = {}  # value → [count, error, seq]
        self._heap: list[tuple[float, float, str]] = []  # (count, seq, value), refreshed lazily
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, value: str) -> float:
        """Count one occurrence; returns the value's guaranteed count (count − error)."""
        e = self._entries.get(value)
        if e is not None:
            e[0] += 1.0
            return e[0] - e[1]
        floor = self._evict() if len(self._entries) >= self.capacity else 0.0
        self._seq += 1
        e = [floor + 1.0, floor, float(self._seq)]
        self._entries[value] = e
        heapq.heappush(self._heap, (e[0], e[2], value))
        return 1.0

    def _evict(self) -> float:
        """Remove the smallest counter (oldest on ties); returns its count."""
        heap, entries = self._heap, self._entries
        while True:
            count, seq, value = heap[0]
            e = entries.get(value)
            if e is None or e[2] != seq:  # discarded, or re-entered since
                heapq.heappop(heap)
            elif e[0] != count:  # counted since it was pushed
                heapq.heapreplace(heap, (e[0], seq, value))
            else:
                heapq.heappop(heap)
                del entries[value]
                return count

    def discard(self, value: str) -> None:
        self._entries.pop(value, None)

    def scale(self, factor: float) -> None:
        """Fade every count and error (and rebuild the heap, dropping stale items)."""
        for e in self._entries.values():
            e[0] *= factor
            e[1] *= factor
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(e[0], e[2], v) for v, e in self._entries.items()]
        heapq.heapify(self._heap)

    def state(self) -> dict[str, Any]:
        return {"seq": self._seq, "entries": [[v, e[0], e[1], int(e[2])] for v, e in self._entries.items()]}

    def restore(self, state: dict[str, Any]) -> None:
        self._seq = state["seq"]
        self._entries = {v: [c, err, float(seq)] for v, c, err, seq in state["entries"]}
        self._rebuild()
        while len(self._entries) > self.capacity:  # the config now allows fewer counters
            self._evict()


class ValueAdmission:
    """The tracked values of one (model, dimension), and the candidates for a place among them."""

    def __init__(self, cap: int, candidates: int, min_count: float):
        self.cap = cap
        self.min_count = min_count
        self.tracked: dict[str, float] = {}  # value → faded count
        self.candidates = SpaceSaving(candidates)
        # a candidate below this guaranteed count cannot take a place (recomputed after changes)
        self.bar = 0.0

    def count(self, value: str) -> float:
        """A value that is not tracked, seen once more: its guaranteed count. Only when it reaches
        :attr:`bar` can the value be admitted (:meth:`choose`)."""
        return self.candidates.add(value)

    def choose(self, g: float, busy: Callable[[str], bool]) -> str | None:
        """A candidate with guaranteed count ``g`` at the bar: the tracked value it replaces (the
        caller retires it and calls :meth:`admit`), or None (the bar is raised)."""
        victim = self.weakest(busy)
        if victim is None:
            self.bar = float("inf")  # every tracked value is busy: wait for the next half-life
            return None
        self.bar = max(self.min_count, 2.0 * self.tracked[victim])
        return victim if g >= self.bar else None

    def weakest(self, busy: Callable[[str], bool]) -> str | None:
        """The tracked value with the smallest count (then the smallest name) that is not busy."""
        for value, _ in sorted(self.tracked.items(), key=lambda vc: (vc[1], vc[0])):
            if not busy(value):
                return value
        return None

    def admit(self, value: str, replacing: str | None) -> None:
        count = self.candidates._entries[value]
        self.tracked[value] = count[0] - count[1]
        self.candidates.discard(value)
        if replacing is not None:
            del self.tracked[replacing]
        self.bar = 0.0

    def fade(self, factor: float) -> None:
        for value in self.tracked:
            self.tracked[value] *= factor
        self.candidates.scale(factor)
        self.bar = 0.0

    def state(self) -> dict[str, Any]:
        return {"tracked": [[v, c] for v, c in self.tracked.items()], "candidates": self.candidates.state(),
                "bar": self.bar}

    def restore(self, state: dict[str, Any]) -> None:
        self.tracked = {v: c for v, c in state["tracked"]}
        self.candidates.restore(state["candidates"])
        self.bar = state["bar"]
