"""Decoding prediction / feedback / outcome events from JSON bytes.

Every way an event can be unusable has a named reason (see :data:`REASONS`); the decoder
raises :class:`InvalidEvent` with it and the caller counts and skips the event. Decoded
events are small tuples (cheap to keep pending in the join), not dicts.
"""

from __future__ import annotations

import math
import re
from itertools import islice, repeat
from operator import attrgetter
from datetime import datetime
from sys import intern
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Union

import msgspec
import numpy as np

from monitor.config import EventsConfig

#: every reason an event can be rejected for, in the order they are checked
REASONS = (
    "oversized",
    "bad_json",
    "not_an_object",
    "bad_type",
    "missing_id",
    "bad_id",
    "missing_timestamp",
    "bad_timestamp",
    "missing_model",
    "bad_model",
    "unknown_model",
    "model_limit",
    "bad_tenant",
    "bad_attributes",
    "missing_output",
    "bad_output",
    "missing_label",
    "bad_label",
    "bad_errors_units",
    "unscorable",  # an output or label the configured metrics cannot score (text for WER, ...)
    "future_timestamp",  # further ahead than events.max_future (checked by the engine)
    "bad_submission",  # a bias-bounty submission that cannot be tested (the detail names the JSON path)
)

UNKNOWN = "unknown"


class InvalidEvent(Exception):
    """A poison event: counted under ``reason`` and skipped."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Event(NamedTuple):
    kind: str  # "prediction" | "feedback" | "outcome"
    id: str
    ts: float  # epoch seconds
    model: str | None  # None on feedback that does not name one
    tenant: str | None
    attributes: dict[str, str]
    output: Any  # str | float | int | None
    label: Any
    errors: float | None  # precomputed by a service that scores itself
    units: float | None


_MAX_TS = 32503680000.0  # year 3000: later event times are refused
_MINUTES: dict[str, float] = {}  # "2026-11-24T10:00" → epoch seconds, for UTC timestamps


def _minute(prefix: str) -> float | None:
    """Epoch seconds of ``YYYY-MM-DDTHH:MM`` (UTC), remembered; None when it is no such minute."""
    base = _MINUTES.get(prefix)
    if base is None:
        try:
            base = datetime.fromisoformat(prefix + ":00+00:00").timestamp()
        except ValueError:
            return None
        if len(_MINUTES) > 10_000:
            _MINUTES.clear()
        _MINUTES[prefix] = base
    return base


def _fast_utc(text: str) -> float | None:
    """``YYYY-MM-DDTHH:MM:SS[.fff]Z`` without building a datetime per event (the common wire format)."""
    if len(text) < 20 or text[-1] != "Z" or text[16] != ":" or text[10] != "T":
        return None
    sec = text[17:-1]
    if not (sec[:2].isdigit() and (len(sec) == 2 or (sec[2] == "." and sec[3:].isdigit()))):
        return None
    base = _minute(text[:16])
    if base is None:
        return None
    seconds = float(sec)
    return base + seconds if seconds < 61 else None


_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)  # of YYYY-MM-DDTHH:MM:SS
_MARKS = ((4, ord("-")), (7, ord("-")), (10, ord("T")), (13, ord(":")), (16, ord(":")))


def _fast_utc_many(texts: Sequence[str]) -> list[float] | None:
    """:func:`_fast_utc` of many texts at once, in numpy (those of each length together); None unless every one is
    ``YYYY-MM-DDTHH:MM:SS[.f…]Z`` (at most 9 digits of fraction) with a valid minute and seconds < 61.

    The same numbers as :func:`_fast_utc`: the minute's epoch seconds from the same function,
    plus the seconds as an integer over a power of ten (both exact, so the one division rounds
    as ``float(text)`` does), added in the same order.
    """
    widths = set(map(len, texts))
    if len(widths) > 1:  # (e.g. Python's isoformat leaves out a zero fraction): each width apart
        out = [0.0] * len(texts)
        for width in widths:
            at = [i for i, t in enumerate(texts) if len(t) == width]
            part = _fast_utc_many([texts[i] for i in at])
            if part is None:
                return None
            for i, ts in zip(at, part):
                out[i] = ts
        return out
    width = len(texts[0])
    if not (width == 20 or 22 <= width <= 30):
        return None
    try:
        data = "".join(texts).encode("ascii")
    except UnicodeEncodeError:
        return None
    a = np.frombuffer(data, dtype=np.uint8).reshape(len(texts), width)
    digits = list(_DIGITS) + list(range(20, width - 1))
    d = a[:, digits].astype(np.int64) - ord("0")
    if (d < 0).any() or (d > 9).any() or (a[:, width - 1] != ord("Z")).any():
        return None
    for col, mark in _MARKS:
        if (a[:, col] != mark).any():
            return None
    if width > 20 and (a[:, 19] != ord(".")).any():
        return None
    prefixes, where = np.unique(np.ascontiguousarray(a[:, :16]).view("S16").ravel(), return_inverse=True)
    bases = [_minute(p.decode("ascii")) for p in prefixes.tolist()]
    if None in bases:
        return None
    scaled = d[:, 12] * 10 + d[:, 13]  # whole seconds, then each digit of the fraction
    for k in range(14, d.shape[1]):
        scaled = scaled * 10 + d[:, k]
    seconds = scaled / float(10 ** (d.shape[1] - 14))
    if (seconds >= 61).any():
        return None
    return (np.array(bases, dtype=np.float64)[where.ravel()] + seconds).tolist()


def _times(values: Sequence[Any]) -> Sequence[float] | None:
    """Event times as :meth:`Decoder._check` reads them, when every one is epoch seconds in range
    or :func:`_fast_utc_many` text (None otherwise)."""
    types = set(map(type, values))
    if not types <= {float, str}:
        return None
    if float in types:
        seconds = [v for v in values if type(v) is float]
        times = np.array(seconds, dtype=np.float64)
        if not ((times >= 0.0) & (times <= _MAX_TS)).all():
            return None
        if len(seconds) == len(values):
            return values
    texts = [v for v in values if type(v) is str] if float in types else values
    parsed = _fast_utc_many(texts)
    if parsed is None or len(texts) == len(values):
        return parsed
    it = iter(parsed)
    return [v if type(v) is float else next(it) for v in values]


def parse_ts(value: Any) -> float:
    """Epoch seconds from RFC 3339 text or a number of epoch seconds.

    >>> parse_ts("2026-11-24T10:00:00.250Z"), parse_ts(1700000000), parse_ts("2026-11-24T11:00:00.250+01:00")
    (1795514400.25, 1700000000.0, 1795514400.25)
    """
    if type(value) is str and (fast := _fast_utc(value)) is not None:
        return fast
    if isinstance(value, bool):
        raise ValueError("a timestamp is RFC 3339 text or epoch seconds, not a boolean")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)  # Python ≥ 3.11 reads "Z" itself
        except ValueError:
            text = value.strip()
            if text.endswith(("Z", "z")):
                text = text[:-1] + "+00:00"
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{value!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone offset")
        ts = dt.timestamp()
    else:
        raise ValueError(f"a timestamp is RFC 3339 text or epoch seconds, got {type(value).__name__}")
    if not math.isfinite(ts) or ts < 0 or ts > _MAX_TS:
        raise ValueError(f"{value!r} is out of range")
    return ts


def scalar_text(value: Any) -> str | None:
    """Attribute values: strings, numbers and booleans become text; null means absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    raise TypeError


def attribute_dict(value: dict[str, Any] | None) -> dict[str, str]:
    """An event's attributes as the engine keeps them: values as text (null: absent), interned,
    since thousands of pending predictions share a handful of attribute values."""
    attrs: dict[str, str] = {}
    if value:
        for key, v in value.items():
            if type(v) is str:
                attrs[key] = intern(v) if len(v) <= 64 else v
            elif v is not None:
                attrs[key] = scalar_text(v)  # type: ignore[assignment]
    return attrs


_Scalar = Union[str, int, float, bool, None]
#: where msgspec reports a type error, and the reason it is counted under
_FIELD_REASON = {"id": "bad_id", "ts": "bad_timestamp", "model": "bad_model", "tenant": "bad_tenant",
                 "attributes": "bad_attributes", "output": "bad_output", "label": "bad_label",
                 "errors": "bad_errors_units", "units": "bad_errors_units", "type": "bad_type"}
_NULL = msgspec.Raw(b"null")
_KINDS = frozenset(("prediction", "feedback", "outcome"))
_FIELDS = attrgetter("type", "id", "ts", "model", "tenant", "attributes", "output", "label", "errors", "units")
_STR, _NONE = frozenset((str,)), type(None)
BATCH = 1024  # events decoded together by Decoder.decode_stream
_MAX_ID = 512  # characters of an event id
_ATTR_CACHE_MAX = 10_000  # distinct attribute texts remembered by decode_many (then forgotten, and again)
_AT = re.compile(r"at `\$\.?([^\[`]*)")  # the top-level field msgspec names in "... - at `$.field[...]`"


def _schema(fields: Any, raw_attributes: bool = False) -> Any:
    """The wire schema as a msgspec Struct, with the config's field names (validated in C);
    ``raw_attributes``: the attributes left as their JSON text (for :meth:`Decoder.decode_many`)."""
    spec: list[tuple[str, Any, Any]] = [
        ("type", Any, None),
        ("id", Union[str, int, None], None),
        ("ts", Union[str, float, None], None),
        ("model", Union[str, None], None),
        ("tenant", _Scalar, None),
        ("attributes", Union[dict[str, _Scalar], None], None),
        ("output", Any, None),
        ("label", Any, None),
        ("errors", Union[float, None], None),
        ("units", Union[float, None], None),
    ]
    if raw_attributes:
        spec[5] = ("attributes", msgspec.Raw, _NULL)
    rename = {name: getattr(fields, name) for name, _, _ in spec}
    name = "RawAttributesEvent" if raw_attributes else "WireEvent"
    return msgspec.defstruct(name, spec, rename=rename, forbid_unknown_fields=False)


class Decoder:
    """Turns raw bytes into :class:`Event` according to the config's field mapping."""

    def __init__(self, cfg: EventsConfig, unscorable: Callable[[Any], str | None] | None = None,
                 submission: Callable[[Any], Any] | None = None, text_scorable: bool = False):
        """``unscorable(value)``: why an output or label can never be scored (the scorer knows);
        ``text_scorable``: it never objects to text (no metric needs numbers), so text skips it;
        ``submission(obj)``: a bias-bounty submission from its JSON object (raises ValueError),
        returned by :meth:`decode` in place of an :class:`Event`."""
        self.cfg = cfg
        self._unscorable = unscorable
        self._text_scorable = text_scorable or unscorable is None
        self._max_text = cfg.max_text_chars
        self._max_bytes = cfg.max_event_bytes  # (read per event: a plain attribute, not the config model's)
        self._submission = submission
        self._wire = _schema(cfg.fields)
        self._decode = msgspec.json.Decoder(self._wire).decode
        self._decode_raw_attrs = msgspec.json.Decoder(_schema(cfg.fields, raw_attributes=True)).decode
        self._decode_attrs = msgspec.json.Decoder(Union[dict[str, _Scalar], None]).decode
        self._attrs: dict[bytes, dict[str, str]] = {}  # attributes' JSON text → the dict _check makes of it
        self._names = {name: getattr(cfg.fields, name) for name in _FIELD_REASON}
        self._reason_by_wire = {wire: _FIELD_REASON[name] for name, wire in self._names.items()}
        self._allowed = frozenset(cfg.models) if cfg.models is not None else None
        self._seen_models: dict[str, str] = {}

    def decode(self, raw: bytes | str) -> Event:
        if len(raw) > self._max_bytes:
            raise InvalidEvent("oversized", f"{len(raw)} bytes > {self._max_bytes}")
        try:
            w = self._decode(raw)
        except msgspec.ValidationError as exc:
            raise self._type_error(str(exc)) from None
        except msgspec.DecodeError as exc:
            raise InvalidEvent("bad_json", str(exc)) from None
        if w.type == "submission" and self._submission is not None:
            try:
                return self._submission(msgspec.json.decode(raw))
            except ValueError as exc:
                raise InvalidEvent("bad_submission", str(exc)[:300]) from None
        return self._check(w)

    def decode_batches(self, raws: Iterable[bytes | str]) -> Generator[list[Event | Any | InvalidEvent], None, None]:
        """:meth:`decode_many` of ``raws`` in batches of :data:`BATCH`."""
        it = iter(raws)
        while batch := list(islice(it, BATCH)):
            yield self.decode_many(batch)

    def decode_stream(self, raws: Iterable[bytes | str]) -> Iterator[Event | Any | InvalidEvent]:
        """:meth:`decode_batches`, one result per raw, in order."""
        for batch in self.decode_batches(raws):
            yield from batch

    def decode_many(self, raws: Sequence[bytes | str]) -> list[Event | Any | InvalidEvent]:
        """:meth:`decode` of each (an invalid one as its :class:`InvalidEvent`, not raised).

        A batch is checked by columns, with a handful of C-level passes instead of :meth:`decode`'s
        Python per event: attribute objects by their JSON text (one dict per distinct text, shared),
        timestamps in numpy. Whenever anything in the batch is not plainly valid (an invalid event,
        a model seen first, a submission, an unusual type), the batch is decoded event by event
        with :meth:`decode` instead; so the result is always exactly :meth:`decode`'s.
        """
        if len(raws) >= 8:
            try:
                fast = self._columns(raws)
            except (msgspec.ValidationError, msgspec.DecodeError, InvalidEvent, TypeError):
                fast = None  # (TypeError: an unhashable type value)
            if fast is not None:
                return fast
        out: list[Event | Any | InvalidEvent] = []
        for raw in raws:
            try:
                out.append(self.decode(raw))
            except InvalidEvent as exc:
                out.append(exc)
        return out

    def _columns(self, raws: Sequence[bytes | str]) -> list[Event | Any | InvalidEvent] | None:
        """The batch, when it is plainly valid (None otherwise: raises or returns None at the first
        doubt, having changed nothing but its caches of attribute dicts and interned strings)."""
        if max(map(len, raws)) > self._max_bytes:
            return None
        kinds, ids, tss, models, tenants, raw_attrs, outputs, labels, errors, units = \
            zip(*map(_FIELDS, map(self._decode_raw_attrs, raws)))
        if not _KINDS.issuperset(kinds):
            return None
        # ids: text up to _MAX_ID characters (numbers become text)
        id_types = set(map(type, ids))
        if id_types != _STR:
            if not id_types <= {str, int}:
                return None
            if max((len(i) for i in ids if type(i) is str), default=0) > _MAX_ID or "" in ids:
                return None
            ids = tuple(i if type(i) is str else str(i) for i in ids)
        elif max(map(len, ids)) > _MAX_ID or "" in ids:
            return None
        tss = _times(tss)  # type: ignore[assignment]
        if tss is None:
            return None
        # models: every one admitted already (admitting one changes what the next may be)
        seen = self._seen_models
        named = set(models)
        if None in named:
            named.discard(None)
            default = self.cfg.default_model
            if default is not None and default not in seen:
                return None
            if default is None and any(m is None and k != "feedback" for k, m in zip(kinds, models)):
                return None
            models = tuple(m if m is not None or k == "feedback" else default for k, m in zip(kinds, models))
        if not named <= seen.keys():
            return None
        models = tuple(map(seen.get, models))  # one shared string per model (None stays None)
        # tenants: text, interned
        tenant_types = set(map(type, tenants))
        if tenant_types == _STR:
            tenants = tuple(map(intern, tenants))
        elif tenant_types <= {str, _NONE}:
            tenants = tuple(t if t is None else intern(t) for t in tenants)
        else:
            return None
        attrs = self._attributes(raw_attrs)
        if attrs is None:
            return None
        outputs, labels, errors, units = self._values(kinds, outputs, labels, errors, units)
        return list(map(tuple.__new__, repeat(Event),
                        zip(kinds, ids, tss, models, tenants, attrs, outputs, labels, errors, units)))

    def _attributes(self, raws: tuple[msgspec.Raw, ...]) -> list[dict[str, str]] | None:
        """Each event's attributes as :meth:`_check` makes them, one dict per distinct JSON text."""
        cache = self._attrs
        texts = list(map(bytes, raws))
        found = list(map(cache.get, texts))
        if None not in found:
            return found  # type: ignore[return-value]
        for i, (text, got) in enumerate(zip(texts, found)):
            if got is None:
                got = cache.get(text)
                if got is None:
                    got = attribute_dict(self._decode_attrs(text))  # (its errors: the batch is decoded one by one)
                    if len(cache) >= _ATTR_CACHE_MAX:
                        cache.clear()
                    cache[text] = got
                found[i] = got
        return found  # type: ignore[return-value]

    def _values(self, kinds: tuple[str, ...], outputs: tuple[Any, ...], labels: tuple[Any, ...],
                errors: tuple[Any, ...], units: tuple[Any, ...]) -> tuple[Any, Any, Any, Any]:
        """Output, label, errors and units as :meth:`_check` leaves them (raises InvalidEvent)."""
        if set(errors) == {None} and set(units) == {None}:
            errors = units = tuple(repeat(None, len(kinds)))
        elif "prediction" not in kinds and set(map(type, errors)) == {float} == set(map(type, units)):
            e, u = np.array(errors, dtype=np.float64), np.array(units, dtype=np.float64)  # (pre-scored outcomes)
            if not ((e >= 0.0) & (u >= 0.0) & np.isfinite(e + u)).all():
                raise InvalidEvent("bad_errors_units")
        else:  # a service's own errors/units, on feedback and outcomes
            pairs = [self._errors_units(e, u) if k != "prediction" and (e is not None or u is not None) else (None, None)
                     for k, e, u in zip(kinds, errors, units)]
            errors, units = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
        straight = self._text_scorable
        max_text = self._max_text
        outputs = tuple(None if k == "feedback" else o for k, o in zip(kinds, outputs))
        labels = tuple(None if k == "prediction" else y for k, y in zip(kinds, labels))
        for values, skip, missing, bad, side in ((outputs, "feedback", "missing_output", "bad_output", "output"),
                                                 (labels, "prediction", "missing_label", "bad_label", "label")):
            given = [v for k, v in zip(kinds, values) if k != skip] if skip in kinds else values
            types = set(map(type, given))
            if straight and types <= _STR and (not given or max(map(len, given)) <= max_text):
                continue  # text the metrics take: goes straight on
            if types == {_NONE} and None not in ([e for k, e in zip(kinds, errors) if k != skip]
                                                 if skip in kinds else errors):
                continue  # none, where the service's own errors replace it
            for k, v, e in zip(kinds, values, errors):
                if k == skip:
                    continue
                if v is None:
                    if e is None:
                        raise InvalidEvent(missing)
                elif type(v) is not str or len(v) > max_text or not straight:
                    self._value(v, bad)
                    self._scorable(v, e, side)
        return outputs, labels, errors, units

    def _type_error(self, message: str) -> InvalidEvent:
        m = _AT.search(message)
        if m is None or not m.group(1):
            return InvalidEvent("not_an_object", message)
        return InvalidEvent(self._reason_by_wire.get(m.group(1), "bad_json"), message)

    def _check(self, w: Any) -> Event:
        kind = w.type
        if kind not in ("prediction", "feedback", "outcome"):
            raise InvalidEvent("bad_type", f"{self._names['type']}={kind!r}")

        eid = w.id
        if eid is None or eid == "":
            raise InvalidEvent("missing_id")
        if type(eid) is int:
            eid = str(eid)
        elif len(eid) > _MAX_ID:
            raise InvalidEvent("bad_id", f"longer than {_MAX_ID} characters")

        ts = w.ts
        if ts is None:
            raise InvalidEvent("missing_timestamp")
        if type(ts) is float and 0.0 <= ts <= _MAX_TS:  # epoch seconds in range: nothing to parse
            pass
        elif type(ts) is not str or (ts := _fast_utc(ts)) is None:  # (the common wire format, first)
            try:
                ts = parse_ts(w.ts)
            except ValueError as exc:
                raise InvalidEvent("bad_timestamp", str(exc)) from None

        model = w.model
        if model is None:
            if kind != "feedback":
                if self.cfg.default_model is None:
                    raise InvalidEvent("missing_model")
                model = self.cfg.default_model
        elif not model or len(model) > 200:
            raise InvalidEvent("bad_model", repr(model)[:80])
        if model is not None:
            if model not in self._seen_models:
                self._admit_model(model)
            model = self._seen_models[model]  # one shared string per model

        tenant = w.tenant
        if tenant is not None:
            tenant = intern(tenant) if type(tenant) is str else scalar_text(tenant)

        attrs = attribute_dict(w.attributes)

        output = label = errors = units = None
        if kind != "prediction" and (w.errors is not None or w.units is not None):
            errors, units = self._errors_units(w.errors, w.units)
        if kind != "feedback":
            output = w.output
            if output is None:
                if errors is None:
                    raise InvalidEvent("missing_output")
            elif type(output) is not str or len(output) > self._max_text or not self._text_scorable:
                output = self._value(output, "bad_output")  # (text the metrics take goes straight on)
                self._scorable(output, errors, "output")
        if kind != "prediction":
            label = w.label
            if label is None:
                if errors is None:
                    raise InvalidEvent("missing_label")
            elif type(label) is not str or len(label) > self._max_text or not self._text_scorable:
                label = self._value(label, "bad_label")
                self._scorable(label, errors, "label")
        return Event(kind, eid, ts, model, tenant, attrs, output, label, errors, units)

    def _scorable(self, value: Any, errors: float | None, side: str) -> None:
        if errors is None and self._unscorable is not None and (why := self._unscorable(value)) is not None:
            raise InvalidEvent("unscorable", f"{side}: {why}")

    def seen_models(self) -> list[str]:
        return list(self._seen_models)

    def admit(self, models: list[str]) -> None:
        """Models already accepted (restored from a checkpoint) keep their place under the cap."""
        for model in models:
            self._seen_models[model] = intern(model)

    def _admit_model(self, model: str) -> None:
        if self._allowed is not None and model not in self._allowed:
            raise InvalidEvent("unknown_model", model)
        if len(self._seen_models) >= self.cfg.max_models:
            raise InvalidEvent("model_limit", f"more than {self.cfg.max_models} models")
        self._seen_models[model] = intern(model)

    def _value(self, value: Any, reason: str) -> Any:
        if type(value) is str:
            if len(value) > self.cfg.max_text_chars:
                raise InvalidEvent(reason, f"longer than {self.cfg.max_text_chars} characters")
            return value
        if isinstance(value, (bool, int)) or (isinstance(value, float) and math.isfinite(value)):
            return value
        raise InvalidEvent(reason, type(value).__name__)

    @staticmethod
    def _errors_units(errors: float | None, units: float | None) -> tuple[float, float]:
        if errors is None or units is None or errors < 0 or units < 0 or not math.isfinite(errors + units):
            raise InvalidEvent("bad_errors_units", f"errors={errors!r} units={units!r}")
        return float(errors), float(units)
