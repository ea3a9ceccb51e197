"""Which slices an outcome belongs to, with bounded memory.

A slice is a set of ``dimension = value`` pairs within one model; the whole population
``{}`` is always tracked. Values come from the event's ``tenant`` (the ``tenant``
dimension) and ``attributes``; a missing one is ``unknown``, never imputed.

Bounds: each model keeps at most ``max_values_per_dimension`` distinct values per dimension
and ``max_slices`` slices in total; anything beyond maps to ``__other__`` and is counted, so
a flood of new values cannot grow memory (or Prometheus series) without bound.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

from monitor.config import SlicesConfig
from monitor.events import UNKNOWN

OTHER = "__other__"
_ROUTE_CACHE_MAX = 200_000


class SliceKey(NamedTuple):
    model: str
    combo: int  # index into SliceIndex.combos; 0 is the whole population
    values: tuple[str, ...]


class SliceIndex:
    def __init__(self, cfg: SlicesConfig):
        self.cfg = cfg
        self.dimensions: tuple[str, ...] = tuple(cfg.dimensions)
        order = {d: i for i, d in enumerate(self.dimensions)}
        combos = [tuple(sorted(order[d] for d in combo)) for combo in cfg.combinations]
        #: dimension indices of each tracked combination; combination 0 is ``{}``
        self.combos: tuple[tuple[int, ...], ...] = ((),) + tuple(c for c in combos if c)
        self.keys: list[SliceKey] = []
        self._ids: dict[SliceKey, int] = {}
        self._values: dict[tuple[str, int], set[str]] = {}
        # (model, tenant, *attribute values as they arrived) → slice ids: one dict lookup per outcome
        self._routes: dict[tuple[str | None, ...], list[int]] = {}
        self._attr_dims = self.dimensions  # "tenant" too: it may come from attributes when the field is absent
        self.value_overflow: Counter[str] = Counter()  # dimension → outcomes mapped to __other__
        self.slice_overflow = 0  # outcomes whose slice was over the cap
        self._regular = 0  # slices created within the cap

    def __len__(self) -> int:
        return len(self.keys)

    # ---- checkpointing (the route cache is rebuilt on demand) ----------------------------------
    def state(self) -> dict[str, Any]:
        return {"keys": [[k.model, k.combo, list(k.values)] for k in self.keys],
                "values": [[m, d, sorted(v)] for (m, d), v in self._values.items()],
                "value_overflow": dict(self.value_overflow), "slice_overflow": self.slice_overflow,
                "regular": self._regular}

    def restore(self, state: dict[str, Any]) -> None:
        self.keys = [SliceKey(m, c, tuple(v)) for m, c, v in state["keys"]]
        self._ids = {k: i for i, k in enumerate(self.keys)}
        self._values = {(m, d): set(v) for m, d, v in state["values"]}
        self.value_overflow = Counter(state["value_overflow"])
        self.slice_overflow = state["slice_overflow"]
        self._regular = state["regular"]
        self._routes = {}

    def describe(self, sid: int) -> dict[str, str]:
        key = self.keys[sid]
        dims = self.combos[key.combo]
        return {self.dimensions[d]: v for d, v in zip(dims, key.values)}

    def is_overflow(self, sid: int) -> bool:
        return OTHER in self.keys[sid].values

    def population(self, model: str) -> int:
        """The population slice of ``model``, tracking the model if it is new (as routing does)."""
        return self.route(model, None, {})[0]

    def find(self, model: str, combo: int, values: tuple[str, ...]) -> int:
        """The id of a tracked slice, or -1: a lookup that never creates one, unlike routing."""
        return self._ids.get(SliceKey(model, combo, values), -1)

    def route(self, model: str, tenant: str | None, attributes: dict[str, str]) -> list[int]:
        """Slice ids of every tracked combination for this outcome, population first."""
        get = attributes.get
        raw_key = (model, tenant, *[get(d) for d in self._attr_dims])
        ids = self._routes.get(raw_key)
        if ids is not None:
            return ids
        values = []
        for dim in self.dimensions:
            v = tenant if dim == "tenant" and tenant is not None else attributes.get(dim)
            values.append(UNKNOWN if v is None or v == "" else v)
        overflow_before = self.slice_overflow
        capped = tuple(self._cap_value(model, i, v) for i, v in enumerate(values))
        ids = [self._slice_id(model, ci, tuple(capped[d] for d in combo)) for ci, combo in enumerate(self.combos)]
        overflowed = OTHER in capped or self.slice_overflow != overflow_before
        if not overflowed and len(self._routes) < _ROUTE_CACHE_MAX:
            # overflowed routes are recomputed each time so overflow stays counted per outcome
            self._routes[raw_key] = ids
        return ids

    def _cap_value(self, model: str, dim: int, value: str) -> str:
        seen = self._values.setdefault((model, dim), set())
        if value in seen:
            return value
        if len(seen) < self.cfg.max_values_per_dimension:
            seen.add(value)
            return value
        self.value_overflow[self.dimensions[dim]] += 1
        return OTHER

    def _slice_id(self, model: str, combo: int, values: tuple[str, ...]) -> int:
        key = SliceKey(model, combo, values)
        sid = self._ids.get(key)
        if sid is not None:
            return sid
        if self._regular >= self.cfg.max_slices and combo != 0:
            self.slice_overflow += 1
            key = SliceKey(model, combo, (OTHER,) * len(values))
            sid = self._ids.get(key)
            if sid is not None:
                return sid
        else:
            self._regular += 1
        sid = len(self.keys)
        self.keys.append(key)
        self._ids[key] = sid
        return sid
