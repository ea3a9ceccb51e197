"""Joining predictions with their delayed feedback by id, in either arrival order.

Time is event time: the watermark is the largest event timestamp seen so far, and an entry
pending for longer than the TTL behind it expires (a prediction that never got a label is
counted as ``expired_unlabelled``; feedback whose prediction never came, ``expired_orphan``).
Capacity is bounded: beyond ``max_pending`` the oldest entry is evicted and counted. Ids
already joined are remembered for one TTL so a repeated prediction or feedback is counted as
a duplicate instead of being joined twice.

Pending entries are stored in columns, not as events: an insertion-ordered dict id → slot
(its order is the expiry order), and per slot the id, the event time (float64), a context code
and the value the other half needs (a prediction's output; feedback's label). The context code
indexes a table of the distinct (kind, model, tenant, attributes) combinations, so the thousands
of pending predictions that share a handful of attribute values hold one dict between them (a
code takes 2 bytes while the table has at most 2**16 entries, then 4). Slots are given out in
insertion order and never reused, so the columns are in the dict's order: the oldest entry is
the first slot from a head on that still holds an id, found in O(1) amortized (expiry and
eviction take it on every event at steady state; a dict's first key costs a scan over what was
deleted from its front). A removed entry leaves a hole; once the slots exceed 2 × pending + 4096
the columns are rebuilt from the dict and its slots renumbered, O(n) once per n removals. About
300 bytes per pending ASR prediction with ~14 words of text (299.5 measured), of which the id and
the text themselves are ~205, the dict ~38 and its slot int 28 (``lastmile bench``).

Checkpoints (:meth:`Joiner.state`) are columns too: numpy arrays and msgpack blobs encoded in
C, never per-item Python. An incremental state holds only what changed since the previous
one: the entries added since (a suffix of the insertion order: the slots from a mark on),
the ids removed that the previous state held, the joined ids added (the joined-id memory only
ever loses its oldest entries, so a count says what it lost). :meth:`Joiner.restore` applies a
full state and the increments after it, and checks that each continues the one before.
"""

from __future__ import annotations

import gc
import os
import sys
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import islice, repeat, takewhile
from typing import Any, NamedTuple

import msgspec
import numpy as np

from monitor.events import Event

#: label delay histogram buckets (seconds): 1s … 30d, then +Inf
LABEL_DELAY_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0, 30 * 86400.0)

_MAX_CONTEXTS = 1 << 31
_U16 = "H"  # the context codes' column while the table has at most 2**16 entries (then _U32)
_U32 = next(t for t in "IL" if array(t).itemsize == 4)
_EXT_SCORED = 1  # msgpack extension type of a _Scored value
_CTX_SLACK = 4096  # the context table is compacted once it exceeds 2 × pending + this
_SLOT_SLACK = 4096  # the pending columns are compacted once they exceed 2 × pending + this


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


class _Scored:
    """Pending feedback that carries a service's own errors/units besides its label (rare)."""

    __slots__ = ("label", "errors", "units")

    def __init__(self, label: Any, errors: float | None, units: float | None):
        self.label, self.errors, self.units = label, errors, units


def _enc_hook(obj: Any) -> Any:
    if type(obj) is _Scored:
        return msgspec.msgpack.Ext(_EXT_SCORED, msgspec.msgpack.encode((obj.label, obj.errors, obj.units)))
    raise NotImplementedError(f"cannot checkpoint a pending value of type {type(obj).__name__}")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != _EXT_SCORED:
        raise ValueError(f"unknown msgpack extension {code} in the join state")
    label, errors, units = msgspec.msgpack.decode(data)
    return _Scored(label, errors, units)


_ENCODE = msgspec.msgpack.Encoder(enc_hook=_enc_hook).encode
_DECODE_VALUES = msgspec.msgpack.Decoder(list, ext_hook=_ext_hook).decode
_DECODE_IDS = msgspec.msgpack.Decoder(list[str]).decode


def _blob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _key(kind: str, model: str | None, tenant: str | None, attrs: dict[str, str]) -> tuple[Any, ...] | None:
    """The context table's key (kind, model, tenant, attribute names, then values), or None when
    an attribute value is unhashable (never from the decoder: such an entry is not shared)."""
    key = (kind, model, tenant, *attrs, *attrs.values())
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _interned(value: Any) -> Any:
    return sys.intern(value) if type(value) is str and len(value) <= 64 else value


def _view(codes: array) -> np.ndarray:
    """The codes' column as numpy (release it before the array grows again)."""
    return np.frombuffer(codes, dtype=codes.typecode)


def _columns(times: array, codes: array, values: list[Any], order: list[int]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """The columns of these slots, in this order (copies; the views on the arrays are released on return)."""
    n = len(order)
    if not n:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.uint32), []
    ts_view = np.frombuffer(times, dtype=np.float64)
    code_view = _view(codes)
    index = np.array(order, dtype=np.intp)
    if order[0] + n - 1 == order[-1] and np.array_equal(index, np.arange(order[0], order[0] + n)):
        lo, hi = order[0], order[0] + n  # one run of slots (nothing removed in between): slices
        return ts_view[lo:hi].copy(), code_view[lo:hi].astype(np.uint32), values[lo:hi]
    return ts_view[index], code_view[index].astype(np.uint32, copy=False), list(map(values.__getitem__, order))


class Joiner:
    def __init__(self, ttl: float, max_pending: int):
        self.ttl = ttl
        self.max_pending = max_pending
        self.stats = JoinStats()
        self.watermark = float("-inf")
        self._next_expiry = float("-inf")  # watermark beyond which the front entries may expire
        # pending entries: id → slot, insertion-ordered (the front is (nearly) the oldest, so expiry
        # and eviction take from the front); per slot its id, event time, code and value. Slots
        # are given out in insertion order, never reused (the columns are in the dict's order) and
        # renumbered when the columns are rebuilt without the holes removed entries leave.
        self._slot: dict[str, int] = {}
        self._ids: list[str | None] = []  # None: removed
        self._ts = array("d")
        self._code = array(_U16)  # context code (_U32 beyond 2**16 contexts)
        self._val: list[Any] = []  # a prediction's output; feedback's label (or a _Scored)
        self._head = 0  # every slot before it is a hole: the oldest entry is the first from it on
        self._ctx: list[tuple[str, str | None, str | None, dict[str, str]]] = []  # (kind, model, tenant, attributes)
        self._ctx_index: dict[tuple[Any, ...], int] = {}  # key → code
        self._done: dict[str, float] = {}  # joined ids → when, insertion-ordered; only its front is ever removed
        # ... and its keys in that order: the oldest found in O(1) (a dict finds its first key by
        # skipping every entry deleted from its front since it last resized: O(n) per call, so
        # forgetting the oldest id on every event would cost O(n) each)
        self._done_order: deque[str] = deque()
        # what changed since the last state() (or restore): what an incremental state holds
        self._token: str | None = None  # names the last state taken or restored (None: none yet)
        self._removed: list[str] = []  # ids removed since, that the last state held
        self._new_from = 0  # slots from this one on were added since (slots are in insertion order)
        self._ctx_mark = 0  # context table length then
        self._ctx_rebuilt = False  # the table was compacted since (codes changed): the next state is full
        self._done_mark = 0  # joined-id memory length then
        self._done_dropped = 0  # entries it lost from its front since

    @property
    def pending(self) -> int:
        return len(self._slot)

    def add(self, ev: Event) -> Outcome | None:
        """Feed one event; returns the joined outcome when this event completes one."""
        joined = self.add_many((ev,))
        return joined[0] if joined else None

    def add_many(self, events: Iterable[Event]) -> list[Outcome]:
        """Feed events in order; returns the outcomes they complete, in order (the hot path: one
        loop over the run, the common cases inline)."""
        out: list[Outcome] = []
        new = partial(tuple.__new__, Outcome)  # (every field given: no Python-level __new__ per outcome)
        stats = self.stats
        duplicates, done, slots = stats.duplicates, self._done, self._slot
        for kind, eid, ts, model, tenant, attrs, output, label, errors, units in events:
            if ts > self.watermark:
                self.watermark = ts
                if ts > self._next_expiry:
                    self._expire()
            if eid in done:
                duplicates[kind] += 1
                continue
            if kind == "outcome":
                if eid in slots:
                    duplicates["outcome"] += 1
                    continue
                self._remember(eid, ts)
                stats.outcomes_direct += 1
                out.append(new((eid, model or "", ts, tenant, attrs, output, label, errors, units, ts)))
                continue
            slot = slots.get(eid)
            if slot is None:  # the first half: pending until the other comes
                self._pend(kind, eid, ts, model, tenant, attrs, output, label, errors, units)
                continue
            other_kind, other_model, other_tenant, other_attrs = self._ctx[self._code[slot]]
            if other_kind == kind:
                duplicates[kind] += 1
                continue
            other_ts = self._ts[slot]
            value = self._val[slot]
            self._remove(eid, slot)
            joined_ts = other_ts if other_ts > ts else ts  # (max)
            self._remember(eid, joined_ts)
            stats.joined += 1
            # the label delay: from the prediction to its feedback (0 when the feedback is older)
            delay = ts - other_ts if kind == "feedback" else other_ts - ts
            if not delay > 0.0:
                delay = 0.0
            stats.label_delay_sum += delay
            stats.label_delay_count += 1
            stats.label_delay_buckets[bisect_left(LABEL_DELAY_BUCKETS, delay)] += 1
            if kind == "feedback":  # the pending entry is the prediction
                out.append(new((eid, other_model or model or "", joined_ts,
                                other_tenant if other_tenant is not None else tenant,
                                {**attrs, **other_attrs} if attrs else {**other_attrs},  # a copy: the table's is shared
                                value, label, errors, units, other_ts)))
            elif type(value) is _Scored:
                out.append(new((eid, model or other_model or "", joined_ts,
                                tenant if tenant is not None else other_tenant,
                                {**other_attrs, **attrs} if other_attrs else attrs, output, value.label,
                                value.errors, value.units, ts)))
            else:
                out.append(new((eid, model or other_model or "", joined_ts,
                                tenant if tenant is not None else other_tenant,
                                {**other_attrs, **attrs} if other_attrs else attrs, output, value, None, None, ts)))
        return out

    def _pend(self, kind: str, eid: str, ts: float, model: str | None, tenant: str | None, attrs: dict[str, str],
              output: Any, label: Any, errors: float | None, units: float | None) -> None:
        """A first half, pending until the other comes (the oldest entry evicted when full)."""
        slots = self._slot
        if len(slots) >= self.max_pending:
            oldest = self._oldest()
            self._remove(self._ids[oldest], oldest)  # type: ignore[arg-type]
            self.stats.evicted += 1
        try:
            code = self._ctx_index.get((kind, model, tenant, *attrs, *attrs.values()))
        except TypeError:  # an unhashable attribute value: never from the decoder
            code = None
        if code is None:
            code = self._new_context(kind, model, tenant, attrs)
        if kind == "feedback":
            value = label if errors is None and units is None else _Scored(label, errors, units)
        else:
            value = output
        slot = len(self._ids)
        self._ids.append(eid)
        self._ts.append(ts)
        self._code.append(code)
        self._val.append(value)
        slots[eid] = slot
        if slot >= 2 * len(slots) + _SLOT_SLACK:
            self._compact()  # mostly removed entries
        if ts + self.ttl < self._next_expiry:
            self._next_expiry = ts + self.ttl

    def _new_context(self, kind: str, model: str | None, tenant: str | None, attrs: dict[str, str]) -> int:
        if len(self._ctx) >= 2 * len(self._slot) + _CTX_SLACK:
            self._compact_contexts()  # combinations no pending entry uses any more (e.g. a per-request attribute)
        code = len(self._ctx)
        if code >= _MAX_CONTEXTS:
            raise OverflowError("more than 2**31 distinct attribute combinations pending")
        if code >= 1 << 16 and self._code.typecode == _U16:
            self._code = array(_U32, _view(self._code).astype(np.uint32).tobytes())
        self._ctx.append((kind, model, tenant, attrs))
        key = _key(kind, model, tenant, attrs)
        if key is not None:
            self._ctx_index[key] = code
        return code

    def _compact_contexts(self) -> None:
        order = list(self._slot.values())
        used: list[int] = []
        if order:
            view = _view(self._code)
            unique, inverse = np.unique(view[order], return_inverse=True)
            view[order] = inverse
            del view
            used = unique.tolist()
        self._set_contexts([self._ctx[c] for c in used])
        self._ctx_rebuilt = True

    def _remove(self, eid: str, slot: int) -> int:
        """Drop a pending entry (joined, expired or evicted); returns its code."""
        del self._slot[eid]
        if slot < self._new_from:
            self._removed.append(eid)
        self._ids[slot] = None
        self._val[slot] = None
        return self._code[slot]

    def _oldest(self) -> int:
        """The slot of the oldest pending entry (there is one)."""
        ids, head = self._ids, self._head
        while ids[head] is None:
            head += 1
        self._head = head
        return head

    def _compact(self) -> None:
        """The columns rebuilt with the pending entries alone, in their order (the dict's)."""
        slots = self._slot
        order = list(slots.values())
        index = np.array(order, dtype=np.intp)
        self._ts = array("d", np.frombuffer(self._ts, dtype=np.float64)[index].tobytes())
        self._code = array(self._code.typecode, _view(self._code)[index].tobytes())
        self._val = list(map(self._val.__getitem__, order))
        ids = list(slots)
        slots.update(zip(ids, range(len(ids))))
        self._ids = ids  # type: ignore[assignment]  # (list[str | None] is invariant)
        self._head = 0
        self._new_from = bisect_left(order, self._new_from)

    def _remember(self, eid: str, ts: float) -> None:
        done = self._done
        if len(done) >= self.max_pending:
            del done[self._done_order.popleft()]
            self._done_dropped += 1
        done[eid] = ts
        self._done_order.append(eid)
        if ts + self.ttl < self._next_expiry:
            self._next_expiry = ts + self.ttl

    def _expire(self) -> None:
        horizon = self.watermark - self.ttl
        slots, times, done = self._slot, self._ts, self._done
        next_expiry = float("inf")
        ctx, stats, ids = self._ctx, self.stats, self._ids
        while slots:
            slot = self._oldest()
            ts = times[slot]
            if ts >= horizon:
                next_expiry = ts + self.ttl
                break
            if ctx[self._remove(ids[slot], slot)][0] == "prediction":  # type: ignore[arg-type]
                stats.expired_unlabelled += 1
            else:
                stats.expired_orphan += 1
        order = self._done_order
        while order:
            eid = order[0]
            if done[eid] >= horizon:
                next_expiry = min(next_expiry, done[eid] + self.ttl)
                break
            del done[order.popleft()]
            self._done_dropped += 1
        # entries inserted later are checked when the watermark next passes this point
        self._next_expiry = next_expiry if next_expiry != float("inf") else self.watermark

    # ---- inspection ---------------------------------------------------------------------------
    def contents(self) -> dict[str, Any]:
        """Everything the join holds, in its order, as plain data (to compare two joiners)."""
        pending = []
        for eid, slot in self._slot.items():
            kind, model, tenant, attrs = self._ctx[self._code[slot]]
            value = self._val[slot]
            if type(value) is _Scored:
                value = ("scored", value.label, value.errors, value.units)
            pending.append((eid, kind, self._ts[slot], model, tenant, dict(attrs), value))
        return {"pending": pending, "done": list(self._done.items()), "watermark": self.watermark,
                "next_expiry": self._next_expiry, "stats": asdict(self.stats)}

    # ---- checkpointing ------------------------------------------------------------------------
    def _new_slots(self) -> list[int]:
        """Slots of the entries added since the last state, in insertion order: the last ones in the
        dict's order (slots are in that order too)."""
        found = list(takewhile(self._new_from.__le__, reversed(self._slot.values())))
        found.reverse()
        return found

    def state(self, delta: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The join as plain data and arrays (float64, uint32, and msgpack blobs as uint8).

        ``delta``: only the changes since the previous :meth:`state` or :meth:`restore` (a full
        state when there was none, or when the context table was compacted since). Either way the
        changes are then forgotten: the next delta is relative to this state.
        """
        delta = delta and self._token is not None and not self._ctx_rebuilt
        slots, done = self._slot, self._done
        token = os.urandom(8).hex()
        if delta:
            order = self._new_slots()
            ids = list(islice(reversed(slots.keys()), len(order)))
            ids.reverse()
            contexts = self._ctx[self._ctx_mark:]
            kept = self._done_mark - self._done_dropped  # entries of the previous state still remembered
            drop = min(self._done_dropped, self._done_mark)
            n_added = len(done) - max(kept, 0)
            done_ids = list(islice(reversed(done.keys()), n_added))
            done_ids.reverse()
            done_ts = np.fromiter(islice(reversed(done.values()), n_added), dtype=np.float64, count=n_added)[::-1]
            removed = self._removed
        else:
            ids = list(slots)
            order = list(slots.values())
            contexts = self._ctx
            drop, done_ids, removed = 0, list(done), []
            done_ts = np.fromiter(done.values(), dtype=np.float64, count=len(done))
        times, codes, values = _columns(self._ts, self._code, self._val, order)
        data = {
            "format": 2, "kind": "delta" if delta else "full", "token": token, "parent": self._token if delta else None,
            "watermark": self.watermark, "next_expiry": self._next_expiry, "stats": asdict(self.stats),
            "n_pending": len(slots), "n_done": len(done), "done_drop": drop,
            "ctx_base": self._ctx_mark if delta else 0, "ctx": [list(entry) for entry in contexts],
        }
        arrays = {"ids": _blob(_ENCODE(ids)), "ts": times, "code": codes, "values": _blob(_ENCODE(values)),
                  "removed": _blob(_ENCODE(removed)), "done_ids": _blob(_ENCODE(done_ids)),
                  "done_ts": np.ascontiguousarray(done_ts)}
        self._mark(token)
        return data, arrays

    def restore(self, parts: Sequence[tuple[Mapping[str, Any], Mapping[str, np.ndarray]]] | Mapping[str, Any]) -> None:
        """Become the state ``parts`` describe: (data, arrays) pairs, oldest first — a full state
        and the deltas after it (anything before the last full one is ignored). Raises ValueError
        when a delta does not continue the state before it. A mapping alone is the join state of a
        checkpoint written before the join was columnar."""
        if isinstance(parts, Mapping):
            self._restore_events(parts)
            return
        fulls = [i for i, (data, _) in enumerate(parts) if data.get("kind") == "full"]
        if not fulls:
            raise ValueError("the join state has no full snapshot to start from")
        chain = list(parts[fulls[-1]:])
        with _gc_paused():  # millions of new objects: the cyclic GC would rescan them over and over
            self._apply_chain(chain)

    def _apply_chain(self, chain: list[tuple[Mapping[str, Any], Mapping[str, np.ndarray]]]) -> None:
        def broken(what: str) -> ValueError:
            return ValueError(f"inconsistent join state in a checkpoint chain ({what}); restore the previous checkpoint")

        data, arrays = chain[0]
        ids = _DECODE_IDS(arrays["ids"].data)  # by slot (None, below, where a delta removed the entry)
        slots = dict(zip(ids, range(len(ids))))
        values = _DECODE_VALUES(arrays["values"].data)
        times, codes = [arrays["ts"]], [arrays["code"]]
        contexts = [self._context(entry) for entry in data["ctx"]]
        done_ids = _DECODE_IDS(arrays["done_ids"].data)
        done = dict(zip(done_ids, arrays["done_ts"].tolist()))
        total = len(ids)
        if not (len(slots) == total == len(values) == len(times[0]) == len(codes[0]) == data["n_pending"]) \
                or not len(done) == len(done_ids) == data["n_done"]:
            raise broken("the full snapshot's columns disagree")
        token = data["token"]
        for data, arrays in chain[1:]:
            if data.get("kind") != "delta" or data.get("parent") != token:
                raise broken(f"a part does not continue the state before it: parent {data.get('parent')}, "
                             f"expected {token}")
            token = data["token"]
            if data["ctx_base"] != len(contexts):
                raise broken("context table")
            contexts.extend(self._context(entry) for entry in data["ctx"])
            try:
                freed = list(map(slots.pop, _DECODE_IDS(arrays["removed"].data)))
            except KeyError as exc:
                raise broken(f"removes {exc.args[0]!r}, which the state before it does not hold") from None
            columns: tuple[list[Any], ...] = (ids, values)
            for column in columns:  # each freed slot's id and value: None
                deque(map(column.__setitem__, freed, repeat(None)), maxlen=0)
            new_ids = _DECODE_IDS(arrays["ids"].data)
            new_values = _DECODE_VALUES(arrays["values"].data)
            m = len(new_ids)
            slots.update(zip(new_ids, range(total, total + m)))
            ids.extend(new_ids)
            values.extend(new_values)
            times.append(arrays["ts"])
            codes.append(arrays["code"])
            total += m
            if not (len(slots) == data["n_pending"] and len(new_values) == m == len(times[-1]) == len(codes[-1])):
                raise broken("pending entries")
            drop = data["done_drop"]
            if drop > len(done):
                raise broken("joined ids")
            deque(map(done.__delitem__, list(islice(done, drop))), maxlen=0)
            done_ids = _DECODE_IDS(arrays["done_ids"].data)
            if len(done_ids) != len(arrays["done_ts"]):
                raise broken("joined ids")
            done.update(zip(done_ids, arrays["done_ts"].tolist()))
            if len(done) != data["n_done"]:
                raise broken("joined ids")
        all_codes = np.concatenate(codes).astype(np.uint32, copy=False)
        # (every code in a chain is below its context count: the table only grows within a chain,
        # a compacted one starts a new full state)
        if len(all_codes) and int(all_codes.max()) >= len(contexts):
            raise broken("context codes")
        self._slot = slots
        self._ts = array("d")
        self._ts.frombytes(np.ascontiguousarray(np.concatenate(times), dtype="<f8").data.cast("B"))
        typecode = _U16 if len(contexts) <= 1 << 16 else _U32
        self._code = array(typecode, all_codes.astype(typecode).tobytes())
        self._val = values
        self._ids, self._head = ids, 0  # type: ignore[assignment]  # (list[str | None] is invariant)
        if total > 2 * len(slots) + _SLOT_SLACK:
            self._compact()
        self._set_contexts(contexts)
        self._done, self._done_order = done, deque(done)
        self._restore_scalars(data)
        self._mark(token)

    @staticmethod
    def _context(entry: Sequence[Any]) -> tuple[str, str | None, str | None, dict[str, str]]:
        kind, model, tenant, attrs = entry
        return (sys.intern(kind), _interned(model), _interned(tenant),
                {sys.intern(k): _interned(v) for k, v in attrs.items()})

    def _set_contexts(self, contexts: list[tuple[str, str | None, str | None, dict[str, str]]]) -> None:
        self._ctx = contexts
        self._ctx_index = {}
        for code, entry in enumerate(contexts):
            key = _key(*entry)
            if key is not None:
                self._ctx_index.setdefault(key, code)

    def _restore_scalars(self, data: Mapping[str, Any]) -> None:
        self.watermark = data["watermark"]
        self._next_expiry = data["next_expiry"]
        self.stats = JoinStats(**data["stats"])

    def _mark(self, token: str | None) -> None:
        self._token = token
        self._removed, self._new_from = [], len(self._ids)
        self._ctx_mark, self._ctx_rebuilt = len(self._ctx), False
        self._done_mark, self._done_dropped = len(self._done), 0

    def _restore_events(self, state: Mapping[str, Any]) -> None:
        """The join state of a checkpoint written before the join was columnar: the pending events in order."""
        with _gc_paused():
            events = msgspec.msgpack.decode(state["pending"], type=list[Event])
            cap = self.max_pending
            self.__init__(self.ttl, max(cap, len(events)))  # type: ignore[misc]  # all it held, as it held them
            self.watermark = float("inf")  # nothing expires while they are put back
            for ev in events:
                self.add(ev)
            self.max_pending = cap
            self._done = msgspec.msgpack.decode(state["done"], type=dict[str, float])
            self._done_order = deque(self._done)
        self._restore_scalars(state)
        self._mark(None)  # the next state is a full one
