"""Which dimension values and which slices are tracked: admission by frequency, in bounded memory.

A model tracks at most ``slices.max_values_per_dimension`` values of each dimension. While
there is room, a value is tracked when first seen. Once the cap is full, values that are not
tracked are counted in a :class:`SpaceSaving` summary of ``admission.candidates`` counters
(everything else about them maps to ``__other__``); a candidate whose *guaranteed* count
reaches ``admission.min_count`` and twice the count of the weakest tracked value takes that
value's place. The weakest value is then retired (its slices are recycled) and counted. All
counts fade by half every ``admission.half_life`` outcomes of the model, so a condition that
becomes frequent late is tracked however full the cap was, and values that stop arriving
make room. A value whose slices have an alert firing is never retired. Whole slices are
admitted the same way once ``slices.max_slices`` is full (:class:`SliceAdmission`), so a deep
intersection that becomes frequent late takes the place of one that faded.

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
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np


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
        self._entries: dict[Hashable, list[float]] = {}  # value → [count, error, seq]
        self._heap: list[tuple[float, float, Hashable]] = []  # (count, seq, value), refreshed lazily
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, value: Hashable) -> float:
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

    def discard(self, value: Hashable) -> None:
        self._entries.pop(value, None)

    def take(self, value: Hashable) -> float:
        """Stop counting a held value (it was admitted); returns its guaranteed count."""
        count, error, _ = self._entries.pop(value)
        return count - error

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
        self.tracked[value] = self.candidates.take(value)
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


def _tuple(key: Any) -> Any:
    """A slice key read back from a checkpoint (lists) as the tuple it was."""
    return tuple(_tuple(k) for k in key) if isinstance(key, list) else key


class SliceAdmission:
    """Which slices hold the ``slices.max_slices`` places once all are taken.

    The same rule as for values, applied to whole slices: a slice that is not tracked because the
    cap is full is counted in a :class:`SpaceSaving` summary per model (``admission.candidates``
    counters); once its guaranteed count reaches :attr:`bar` (``admission.min_count`` and twice
    the count of the weakest tracked slice) it takes that slice's place. A tracked slice's count is
    its outcomes in the engine's rows, faded by half with its model's value counts: kept here as
    ``base + outcomes − mark`` per slice id, so counting costs nothing per outcome. Population,
    pinned and ``__other__`` slices are never displaced (they are not *evictable*); neither is a
    slice with an alert firing (the caller's ``busy``).
    """

    def __init__(self, candidates: int, min_count: float):
        self.capacity = candidates
        self.min_count = min_count
        self.candidates: dict[str, SpaceSaving] = {}  # model → candidate slices (SliceKey tuples)
        self.bar = 0.0  # below this guaranteed count a candidate cannot take a place
        self.base = np.zeros(0)  # faded count at the last fade (or admission) ...
        self.mark = np.zeros(0)  # ... and the slice's outcomes at that moment
        self.evictable = np.zeros(0, dtype=bool)

    def track(self, sid: int, evictable: bool) -> None:
        """Slice id ``sid`` now holds a new slice, with no outcomes yet."""
        if sid >= self.base.size:
            grow = max(sid + 1, 2 * self.base.size, 64)
            self.base, self.mark = np.resize(self.base, grow), np.resize(self.mark, grow)
            self.evictable = np.resize(self.evictable, grow)
        self.base[sid] = self.mark[sid] = 0.0
        self.evictable[sid] = evictable

    def untrack(self, sid: int) -> None:
        self.evictable[sid] = False

    def count(self, model: str, key: Hashable) -> float:
        """An untracked slice of ``model`` seen once more: its guaranteed count."""
        cands = self.candidates.get(model)
        if cands is None:
            cands = self.candidates[model] = SpaceSaving(self.capacity)
        return cands.add(key)

    def faded(self, outcomes: np.ndarray) -> np.ndarray:
        """Every slice id's faded count, given its outcomes so far (the engine's rows)."""
        n = outcomes.size
        return self.base[:n] + outcomes - self.mark[:n]

    def choose(self, g: float, outcomes: np.ndarray, busy: Callable[[int], bool], exclude: list[int]) -> int:
        """A candidate with guaranteed count ``g`` at the bar: the slice id it replaces (the caller
        retires it and calls :meth:`admit`), or -1 (the bar is raised). Ties go to the smallest id."""
        counts = self.faded(outcomes)
        counts[~self.evictable[:counts.size]] = np.inf
        counts[[sid for sid in exclude if sid < counts.size]] = np.inf
        for sid in np.argsort(counts, kind="stable"):
            if not np.isfinite(counts[sid]):
                break
            if not busy(int(sid)):
                self.bar = max(self.min_count, 2.0 * float(counts[sid]))
                return int(sid) if g >= self.bar else -1
        self.bar = float("inf")  # every tracked slice is busy: wait for the next half-life
        return -1

    def admit(self, model: str, key: Hashable, sid: int) -> None:
        """The candidate took slice id ``sid`` (tracked with :meth:`track`): it starts from its
        guaranteed count, so it is not the weakest the moment it arrives."""
        self.base[sid] = self.candidates[model].take(key)
        self.bar = 0.0

    def fade(self, model: str, sids: list[int], outcomes: np.ndarray) -> None:
        """Halve the counts of ``model``'s candidates and of its tracked slices ``sids``."""
        if sids:
            ids = np.array(sids, dtype=np.int64)
            self.base[ids] = 0.5 * (self.base[ids] + outcomes[ids] - self.mark[ids])
            self.mark[ids] = outcomes[ids]
        cands = self.candidates.get(model)
        if cands is not None:
            cands.scale(0.5)
        self.bar = 0.0

    def state(self, n: int) -> dict[str, Any]:
        # keys are tuples (model, combo, values): written as lists, read back as tuples
        return {"candidates": {m: c.state() for m, c in self.candidates.items()}, "bar": self.bar,
                "base": self.base[:n].tolist(), "mark": self.mark[:n].tolist(),
                "evictable": self.evictable[:n].tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        self.candidates = {}
        for model, cands in state["candidates"].items():
            self.candidates[model] = SpaceSaving(self.capacity)
            self.candidates[model].restore({**cands, "entries": [[_tuple(k), *rest] for k, *rest in cands["entries"]]})
        self.bar = state["bar"]
        self.base = np.array(state["base"], dtype=np.float64)
        self.mark = np.array(state["mark"], dtype=np.float64)
        self.evictable = np.array(state["evictable"], dtype=bool)
