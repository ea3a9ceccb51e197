"""Which slices an outcome belongs to, with bounded memory.

A slice is a set of ``dimension = value`` pairs within one model; the whole population
``{}`` is always tracked. Values come from the event's ``tenant`` (the ``tenant``
dimension) and ``attributes``; a missing one is ``unknown``, never imputed.

Bounds: each model tracks at most ``max_values_per_dimension`` values per dimension, and
``max_slices`` slices in total, both admitted by frequency (:mod:`monitor.admission`: a value or
a slice that becomes frequent late takes the place of one that faded, which is retired and its
ids recycled); anything beyond maps to ``__other__`` and is counted, so a flood of new values
cannot grow memory (or Prometheus series) without bound.

Groups submitted as bias bounties are *watched*: routing tells which pending groups an
outcome belongs to (memoised with the route, so a predicate runs once per distinct set of
values, not per outcome), and a confirmed group is *pinned*: a slice ``{"group": <text>}``
routed like any other, whose baselines come from the tracked slices containing it
(:meth:`SliceIndex.pinned_ancestors`).

Slice ids are row numbers in the engine's state. A retired slice's id is reused only after the
engine has run the batch that may still hold outcomes routed to it (:meth:`SliceIndex.settle`),
and the engine resets its rows before reuse (:meth:`SliceIndex.take_reused`).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from monitor.admission import SliceAdmission, ValueAdmission
from monitor.config import PINNED_DIMENSION, SlicesConfig
from monitor.events import UNKNOWN
from monitor.predicate import Predicate, Tree, compile_predicate, implied_values, to_text

OTHER = "__other__"
_ROUTE_CACHE_MAX = 200_000


class SliceKey(NamedTuple):
    model: str
    combo: int  # index into SliceIndex.combos; 0 is the whole population
    values: tuple[str, ...]


_RETIRED = SliceKey("", -1, ())  # the key of an id whose slice was retired (until it is reused)


class Watch(NamedTuple):
    """A submitted group of one model's traffic: pending (``sid`` -1) or pinned as slice ``sid``."""

    model: str
    group: Tree  # canonical
    member: Predicate
    sid: int


class SliceIndex:
    def __init__(self, cfg: SlicesConfig):
        self.cfg = cfg
        self.dimensions: tuple[str, ...] = tuple(cfg.dimensions)
        order = {d: i for i, d in enumerate(self.dimensions)}
        combos = [tuple(sorted(order[d] for d in combo)) for combo in cfg.combinations]
        #: dimension indices of each tracked combination; combination 0 is ``{}``
        self.combos: tuple[tuple[int, ...], ...] = ((),) + tuple(c for c in combos if c)
        #: the combination index of pinned groups' keys: SliceKey(model, pin_combo, (text,))
        self.pin_combo = len(self.combos)
        self._watches: dict[int, Watch] = {}
        self._model_watches: dict[str, list[int]] = {}
        self._next_watch = 0
        self._pin_rank: dict[int, int] = {}  # pinned slice id → when it was pinned (routes list them so)
        self.keys: list[SliceKey] = []  # by id; _RETIRED for a retired id not yet reused
        self._ids: dict[SliceKey, int] = {}
        self._admission: dict[tuple[str, int], ValueAdmission] = {}
        self._ticks: dict[str, int] = {}  # outcomes per model since its counts last faded
        self._by_value: dict[tuple[str, int], dict[str, list[int]]] = {}  # (model, dim) → value → ids holding it
        # (model, tenant, *attribute values as they arrived) → (slice ids, the model's value counts per
        # dimension, the values as tracked, pending watched groups holding it): one dict lookup per
        # outcome, plus one count per dimension
        self._routes: dict[tuple[str | None, ...], tuple[list[int], tuple[dict[str, float], ...],
                                                         tuple[str, ...], tuple[int, ...]]] = {}
        self._value_counts: dict[str, tuple[dict[str, float], ...]] = {}  # model → each dimension's value counts
        self._half_life = cfg.admission.half_life
        self._attr_dims = self.dimensions  # "tenant" too: it may come from attributes when the field is absent
        self.value_overflow: Counter[str] = Counter()  # dimension → outcomes mapped to __other__
        self.retired: Counter[str] = Counter()  # dimension → values retired to make room
        self.slice_overflow = 0  # outcomes whose slice was over the cap
        self.slices_retired = 0  # slices that gave up their place to a more frequent one
        self._slice_admission = SliceAdmission(cfg.admission.candidates, cfg.admission.min_count)
        self._regular = 0  # slices tracked within the cap
        self._retiring: list[tuple[int, SliceKey]] = []  # retired ids the engine may still have outcomes for
        self._free: list[int] = []  # heap of retired ids ready for reuse
        self._reused: list[int] = []  # ids reused since the engine last took them
        #: is this slice busy (an alert firing)? Its values are then never retired. The engine sets it.
        self.busy: Callable[[int], bool] = lambda sid: False
        #: called before an admission is decided: the engine runs the outcomes it has buffered
        self.before_admission: Callable[[], None] = lambda: None
        #: outcomes each slice id has received (the engine's rows): what slice admission compares
        self.outcome_counts: Callable[[], np.ndarray] = lambda: np.zeros(len(self.keys))

    def __len__(self) -> int:
        """Ids in use or retired: the engine's rows; :meth:`live` lists the tracked slices."""
        return len(self.keys)

    def live(self) -> list[int]:
        return [sid for sid, key in enumerate(self.keys) if key.combo >= 0]

    # ---- checkpointing (the route cache is rebuilt on demand) ----------------------------------
    def state(self) -> dict[str, Any]:
        return {"keys": [[k.model, k.combo, list(k.values)] for k in self.keys],
                "admission": [[m, d, a.state()] for (m, d), a in self._admission.items()],
                "ticks": dict(self._ticks), "value_overflow": dict(self.value_overflow),
                "retired": dict(self.retired), "slice_overflow": self.slice_overflow, "regular": self._regular,
                "slices_retired": self.slices_retired, "slice_admission": self._slice_admission.state(len(self.keys)),
                "retiring": [[sid, k.model, k.combo, list(k.values)] for sid, k in self._retiring],
                "free": sorted(self._free), "reused": list(self._reused),
                "watches": [[wid, w.model, w.group, w.sid] for wid, w in self._watches.items()],
                "next_watch": self._next_watch, "pin_order": sorted(self._pin_rank, key=self._pin_rank.__getitem__)}

    def restore(self, state: dict[str, Any]) -> None:
        self.keys = [SliceKey(m, c, tuple(v)) for m, c, v in state["keys"]]
        self._ids = {k: i for i, k in enumerate(self.keys) if k.combo >= 0}
        self._by_value = {}
        for sid, key in enumerate(self.keys):
            self._index_values(sid, key)
        self._admission, self._value_counts = {}, {}
        for m, d, a in state["admission"]:
            self._admission[(m, d)] = adm = self._new_admission()
            adm.restore(a)
        self._ticks = dict(state["ticks"])
        self.value_overflow = Counter(state["value_overflow"])
        self.retired = Counter(state["retired"])
        self.slice_overflow = state["slice_overflow"]
        self.slices_retired = state.get("slices_retired", 0)
        if "slice_admission" in state:
            self._slice_admission.restore(state["slice_admission"])
        else:  # a checkpoint from before slices were admitted by frequency: counts start from outcomes
            for sid, key in enumerate(self.keys):
                self._slice_admission.track(sid, self._evictable(key))
        self._regular = state["regular"]
        self._retiring = [(sid, SliceKey(m, c, tuple(v))) for sid, m, c, v in state["retiring"]]
        self._free, self._reused = list(state["free"]), list(state["reused"])
        heapq.heapify(self._free)
        self._watches, self._model_watches = {}, {}
        for wid, model, group, sid in state.get("watches", []):
            self._add_watch(wid, model, group, sid)
        self._next_watch = state.get("next_watch", 0)
        order = state.get("pin_order") or sorted({w.sid for w in self._watches.values() if w.sid >= 0})
        self._pin_rank = {sid: rank for rank, sid in enumerate(order)}
        self._routes = {}

    def _new_admission(self) -> ValueAdmission:
        adm = self.cfg.admission
        return ValueAdmission(self.cfg.max_values_per_dimension, adm.candidates, adm.min_count)

    def _evictable(self, key: SliceKey) -> bool:
        """May this slice give its place to a more frequent one? Not the population, a pinned group
        or an ``__other__`` slice."""
        return 0 < key.combo < self.pin_combo and OTHER not in key.values

    def _index_values(self, sid: int, key: SliceKey) -> None:
        if 0 < key.combo < self.pin_combo:
            for d, v in zip(self.combos[key.combo], key.values):
                self._by_value.setdefault((key.model, d), {}).setdefault(v, []).append(sid)

    # ---- recycling ids (the engine's side) -----------------------------------------------------
    def settle(self) -> list[tuple[int, SliceKey]]:
        """The engine has run every outcome routed so far: ids retired since may be reused.
        Returns them with the slices they held (the engine resolves anything still firing)."""
        done, self._retiring = self._retiring, []
        for sid, _ in done:
            heapq.heappush(self._free, sid)
        return done

    def retiring(self) -> list[int]:
        """Ids retired since the last :meth:`settle` (the engine stops them from alerting)."""
        return [sid for sid, _ in self._retiring]

    def take_reused(self) -> list[int]:
        """Ids given to new slices since the last call: the engine resets their rows."""
        reused, self._reused = self._reused, []
        return reused

    def describe(self, sid: int) -> dict[str, str]:
        return self.describe_key(self.keys[sid])

    def describe_key(self, key: SliceKey) -> dict[str, str]:
        if key.combo < 0:
            raise KeyError("a retired slice id has no slice")
        if key.combo == self.pin_combo:
            return {PINNED_DIMENSION: key.values[0]}
        dims = self.combos[key.combo]
        return {self.dimensions[d]: v for d, v in zip(dims, key.values)}

    def is_overflow(self, sid: int) -> bool:
        return OTHER in self.keys[sid].values

    def population(self, model: str) -> int:
        """The population slice of ``model``, tracking the model if it is new (as routing does)."""
        return self.route(model, None, {})[0]

    def find_slice(self, model: str, slice_: dict[str, str]) -> int:
        """The id of a tracked slice given as ``{dimension: value}`` (or ``{"group": text}``), or -1."""
        if list(slice_) == [PINNED_DIMENSION]:
            return self.find(model, self.pin_combo, (slice_[PINNED_DIMENSION],))
        order = {d: i for i, d in enumerate(self.dimensions)}
        try:
            dims = tuple(sorted(order[d] for d in slice_))
            combo = self.combos.index(dims)
        except (KeyError, ValueError):
            return -1
        return self.find(model, combo, tuple(slice_[self.dimensions[d]] for d in dims))

    def find(self, model: str, combo: int, values: tuple[str, ...]) -> int:
        """The id of a tracked slice, or -1: a lookup that never creates one, unlike routing."""
        return self._ids.get(SliceKey(model, combo, values), -1)

    def route(self, model: str, tenant: str | None, attributes: dict[str, str]) -> list[int]:
        """Slice ids of every tracked combination for this outcome, population first, then the
        pinned groups holding it.

        Each call counts the outcome's values (for admission by frequency), so the result
        depends only on the sequence of calls: replay, the daemon and a restored checkpoint
        route alike."""
        return self.route_with_groups(model, tenant, attributes)[0]

    def route_with_groups(self, model: str, tenant: str | None,
                          attributes: dict[str, str]) -> tuple[list[int], tuple[int, ...]]:
        """:meth:`route`, and the pending watched groups (watch ids) holding the outcome."""
        raw_key = (model, tenant, *map(attributes.get, self._attr_dims))
        ticks = self._ticks
        tick = ticks[model] = ticks.get(model, 0) + 1
        if tick >= self._half_life:
            self._fade(model)
        cached = self._routes.get(raw_key)
        if cached is not None:
            for counts, value in zip(cached[1], cached[2]):
                counts[value] += 1.0
            return cached[0], cached[3]
        values = self.values(tenant, attributes)
        overflow_before = self.slice_overflow
        capped = tuple(self._cap_value(model, i, v) for i, v in enumerate(values))
        keys = [SliceKey(model, ci, tuple(capped[d] for d in combo)) for ci, combo in enumerate(self.combos)]
        mine = [sid for sid in map(self._ids.get, keys) if sid is not None]  # never displaced for a sibling
        ids: list[int] = []
        for key in keys:
            ids.append(sid := self._slice_id(key, mine))
            mine.append(sid)
        watched: tuple[int, ...] = ()
        wids = self._model_watches.get(model)
        if wids:  # groups are judged on the values as they arrived, not as capped
            named = dict(zip(self.dimensions, values))
            hits = [wid for wid in wids if self._watches[wid].member(named)]
            pinned = {self._watches[wid].sid for wid in hits if self._watches[wid].sid >= 0}
            ids += sorted(pinned, key=self._pin_rank.__getitem__)  # as a pin made mid-batch adds its column
            watched = tuple(wid for wid in hits if self._watches[wid].sid < 0)
        overflowed = OTHER in capped or self.slice_overflow != overflow_before
        if not overflowed and len(self._routes) < _ROUTE_CACHE_MAX:
            # overflowed routes are recomputed each time so overflow stays counted per outcome
            per_dim = self._value_counts.get(model)
            if per_dim is None:  # (one per model, shared by its routes)
                per_dim = self._value_counts[model] = tuple(self._admission[(model, d)].tracked
                                                            for d in range(len(capped)))
            self._routes[raw_key] = (ids, per_dim, capped, watched)
        return ids, watched

    # ---- submitted groups: watched while pending, pinned once confirmed ------------------------
    def watch(self, model: str, group: Tree) -> int:
        """Start telling which outcomes of ``model`` hold ``group``; returns the watch id."""
        wid = self._next_watch
        self._next_watch += 1
        self._add_watch(wid, model, group, -1)
        return wid

    def _add_watch(self, wid: int, model: str, group: Tree, sid: int) -> None:
        self._watches[wid] = Watch(model, group, compile_predicate(group, self.dimensions), sid)
        self._model_watches.setdefault(model, []).append(wid)
        self._routes.clear()

    def unwatch(self, wid: int) -> None:
        w = self._watches.pop(wid, None)
        if w is not None:
            self._model_watches[w.model].remove(wid)
            self._routes.clear()

    def pin(self, wid: int) -> int:
        """The watched group becomes a tracked slice ``{"group": <text>}``; returns its id (the
        engine gives it rows). Outcomes routed from now on include it when they hold the group."""
        w = self._watches[wid]
        if w.sid >= 0:
            return w.sid
        key = SliceKey(w.model, self.pin_combo, (to_text(w.group),))
        sid = self._ids.get(key)
        if sid is None:  # (the same group pinned before under another claim: one slice)
            sid = self._new_id(key)
            self._pin_rank[sid] = len(self._pin_rank)
        self._watches[wid] = w._replace(sid=sid)
        self._routes.clear()
        return sid

    @property
    def pinned(self) -> int:
        """Groups pinned as slices."""
        return len(self._pin_rank)

    def pinned_slice(self, wid: int) -> int:
        """The slice a watched group is pinned as, or -1."""
        w = self._watches.get(wid)
        return w.sid if w is not None else -1

    def pinned_ancestors(self, sid: int) -> list[list[tuple[int, tuple[str, ...]]]]:
        """A pinned group's ancestors, nearest first, as :meth:`monitor.baselines.Lineage.ancestors`
        gives them for declared slices: the tracked combinations made only of pairs every member
        of the group has (:func:`monitor.predicate.implied_values`), down to the population."""
        return self.group_ancestors(next(w.group for w in self._watches.values() if w.sid == sid))

    def group_ancestors(self, group: Tree) -> list[list[tuple[int, tuple[str, ...]]]]:
        implied = implied_values(group)
        have = {i for i, d in enumerate(self.dimensions) if d in implied}
        levels: dict[int, list[tuple[int, tuple[str, ...]]]] = {}
        for j, combo in enumerate(self.combos):
            if set(combo) <= have:
                levels.setdefault(len(combo), []).append(
                    (j, tuple(implied[self.dimensions[d]] for d in combo)))
        return [levels[size] for size in sorted(levels, reverse=True)]

    def values(self, tenant: str | None, attributes: dict[str, str]) -> list[str]:
        """An outcome's value of each dimension, as slices see it (missing: ``unknown``)."""
        values = []
        for dim in self.dimensions:
            v = tenant if dim == "tenant" and tenant is not None else attributes.get(dim)
            values.append(UNKNOWN if v is None or v == "" else v)
        return values

    def _cap_value(self, model: str, dim: int, value: str) -> str:
        adm = self._admission.get((model, dim))
        if adm is None:
            adm = self._admission[(model, dim)] = self._new_admission()
        tracked = adm.tracked
        if value in tracked:
            tracked[value] += 1.0
            return value
        if len(tracked) < adm.cap:
            tracked[value] = 1.0
            return value
        g = adm.count(value)
        if g >= adm.bar:
            # decide on the state every earlier outcome left (the engine runs what it has
            # buffered), so the decision does not depend on where batches happen to end
            self.before_admission()
            victim = adm.choose(g, lambda v: self._value_busy(model, dim, v))
            if victim is not None:
                self._retire(model, dim, victim)
                adm.admit(value, victim)
                return value
        self.value_overflow[self.dimensions[dim]] += 1
        return OTHER

    def _holding(self, model: str, dim: int, value: str) -> list[int]:
        """Live slice ids holding ``dim = value`` (the index may list reused ids: checked)."""
        out = []
        for sid in self._by_value.get((model, dim), {}).get(value, ()):
            key = self.keys[sid]
            dims = self.combos[key.combo] if key.combo > 0 else ()
            if key.model == model and dim in dims and key.values[dims.index(dim)] == value:
                out.append(sid)
        return out

    def _value_busy(self, model: str, dim: int, value: str) -> bool:
        return any(self.busy(sid) for sid in self._holding(model, dim, value))

    def _retire(self, model: str, dim: int, value: str) -> None:
        """``value`` gives up its place: its slices stop being tracked; their ids are recycled."""
        for sid in self._holding(model, dim, value):
            self._retire_slice(sid)
        self._by_value.get((model, dim), {}).pop(value, None)
        self.retired[self.dimensions[dim]] += 1

    def _retire_slice(self, sid: int) -> None:
        """Slice ``sid`` stops being tracked; its id is recycled once the engine has run its outcomes."""
        key = self.keys[sid]
        self._retiring.append((sid, key))
        del self._ids[key]
        self.keys[sid] = _RETIRED
        self._regular -= 1
        self._slice_admission.untrack(sid)
        for d, v in zip(self.combos[key.combo], key.values):
            held = self._by_value.get((key.model, d), {}).get(v)
            if held is not None and sid in held:
                held.remove(sid)
        self._routes.clear()  # cached routes may hold the retired ids and count cells

    def _fade(self, model: str) -> None:
        """Every half-life of a model's outcomes, its value counts halve: values that stop
        arriving lose their claim to a place."""
        self._ticks[model] = 0
        for d in range(len(self.dimensions)):
            adm = self._admission.get((model, d))
            if adm is not None:
                adm.fade(0.5)
        self.before_admission()  # the slices' counts are the engine's: every earlier outcome in them
        sids = [sid for sid, key in enumerate(self.keys) if key.model == model and key.combo >= 0]
        self._slice_admission.fade(model, sids, self.outcome_counts())

    def _slice_id(self, key: SliceKey, mine: list[int]) -> int:
        """The id of a slice of the outcome being routed (``mine``: its other tracked slices)."""
        model, combo, values = key
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        if self._regular >= self.cfg.max_slices and combo != 0:
            sid = self._admit_slice(key, mine) if OTHER not in values else -1
            if sid >= 0:
                return sid
            self.slice_overflow += 1
            key = SliceKey(model, combo, (OTHER,) * len(values))
            sid = self._ids.get(key)
            if sid is not None:
                return sid
        else:
            self._regular += 1
        return self._new_id(key)

    def _admit_slice(self, key: SliceKey, mine: list[int]) -> int:
        """The cap is full and ``key`` is not tracked: count it, and when it has earned a place,
        retire the weakest slice (never another of this outcome's) and return the id ``key`` now
        has; -1 while it has not."""
        adm = self._slice_admission
        g = adm.count(key.model, key)
        if g < adm.bar:
            return -1
        self.before_admission()  # decided on the state every earlier outcome left, as for values
        victim = adm.choose(g, self.outcome_counts(), self.busy, mine)
        if victim < 0:
            return -1
        self._retire_slice(victim)
        self.slices_retired += 1
        self._regular += 1  # the place is taken again by the candidate
        sid = self._new_id(key)
        adm.admit(key.model, key, sid)
        return sid

    def _new_id(self, key: SliceKey) -> int:
        if self._free:
            sid = heapq.heappop(self._free)
            self.keys[sid] = key
            self._reused.append(sid)
        else:
            sid = len(self.keys)
            self.keys.append(key)
        self._ids[key] = sid
        self._index_values(sid, key)
        self._slice_admission.track(sid, self._evictable(key))
        return sid
