"""Decoding prediction / feedback / outcome events from JSON bytes.

Every way an event can be unusable has a named reason (see :data:`REASONS`); the decoder
raises :class:`InvalidEvent` with it and the caller counts and skips the event. Decoded
events are small tuples (cheap to keep pending in the join), not dicts.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, NamedTuple

import orjson

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
    "unscorable",  # output and label decode but the metric cannot compare them
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


def parse_ts(value: Any) -> float:
    """Epoch seconds from RFC 3339 text or a number of epoch seconds.

    >>> parse_ts("2026-11-24T10:00:00.250Z"), parse_ts(1700000000)
    (1795514400.25, 1700000000.0)
    """
    if isinstance(value, bool):
        raise ValueError("a timestamp is RFC 3339 text or epoch seconds, not a boolean")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
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
    if not math.isfinite(ts) or ts < 0 or ts > 32503680000.0:  # year 3000
        raise ValueError(f"{value!r} is out of range")
    return ts


def _scalar_text(value: Any) -> str | None:
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


class Decoder:
    """Turns raw bytes into :class:`Event` according to the config's field mapping."""

    def __init__(self, cfg: EventsConfig):
        self.cfg = cfg
        f = cfg.fields
        self._f = (f.type, f.id, f.ts, f.model, f.tenant, f.attributes, f.output, f.label, f.errors, f.units)
        self._allowed = frozenset(cfg.models) if cfg.models is not None else None
        self._seen_models: set[str] = set()

    def decode(self, raw: bytes | str) -> Event:
        if len(raw) > self.cfg.max_event_bytes:
            raise InvalidEvent("oversized", f"{len(raw)} bytes > {self.cfg.max_event_bytes}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("bad_json", str(exc)) from None
        if not isinstance(obj, dict):
            raise InvalidEvent("not_an_object", type(obj).__name__)
        return self.from_object(obj)

    def from_object(self, obj: dict[str, Any]) -> Event:
        f_type, f_id, f_ts, f_model, f_tenant, f_attrs, f_out, f_label, f_err, f_units = self._f
        kind = obj.get(f_type)
        if kind not in ("prediction", "feedback", "outcome"):
            raise InvalidEvent("bad_type", f"{f_type}={kind!r}")

        eid = obj.get(f_id)
        if eid is None or eid == "":
            raise InvalidEvent("missing_id")
        if isinstance(eid, str):
            if len(eid) > 512:
                raise InvalidEvent("bad_id", "longer than 512 characters")
        elif isinstance(eid, int) and not isinstance(eid, bool):
            eid = str(eid)
        else:
            raise InvalidEvent("bad_id", f"{type(eid).__name__}")

        raw_ts = obj.get(f_ts)
        if raw_ts is None:
            raise InvalidEvent("missing_timestamp")
        try:
            ts = parse_ts(raw_ts)
        except ValueError as exc:
            raise InvalidEvent("bad_timestamp", str(exc)) from None

        model = obj.get(f_model)
        if model is None:
            if kind != "feedback":
                if self.cfg.default_model is None:
                    raise InvalidEvent("missing_model")
                model = self.cfg.default_model
        elif not isinstance(model, str) or not model or len(model) > 200:
            raise InvalidEvent("bad_model", repr(model)[:80])
        if model is not None and model not in self._seen_models:
            self._admit_model(model)

        tenant = obj.get(f_tenant)
        if tenant is not None:
            try:
                tenant = _scalar_text(tenant)
            except TypeError:
                raise InvalidEvent("bad_tenant", type(tenant).__name__) from None

        raw_attrs = obj.get(f_attrs)
        attrs: dict[str, str] = {}
        if raw_attrs is not None:
            if not isinstance(raw_attrs, dict):
                raise InvalidEvent("bad_attributes", f"{type(raw_attrs).__name__}, not an object")
            for key, value in raw_attrs.items():
                try:
                    text = _scalar_text(value)
                except TypeError:
                    raise InvalidEvent("bad_attributes", f"{key}: {type(value).__name__}") from None
                if text is not None:
                    attrs[key] = text

        output = label = errors = units = None
        if kind in ("feedback", "outcome"):
            errors, units = obj.get(f_err), obj.get(f_units)
            if errors is not None or units is not None:
                errors, units = self._errors_units(errors, units)
        if kind in ("prediction", "outcome"):
            output = obj.get(f_out)
            if output is None and errors is None:
                raise InvalidEvent("missing_output")
            if output is not None:
                output = self._value(output, "bad_output")
        if kind in ("feedback", "outcome"):
            label = obj.get(f_label)
            if label is None and errors is None:
                raise InvalidEvent("missing_label")
            if label is not None:
                label = self._value(label, "bad_label")
        return Event(kind, eid, ts, model, tenant, attrs, output, label, errors, units)

    def _admit_model(self, model: str) -> None:
        if self._allowed is not None and model not in self._allowed:
            raise InvalidEvent("unknown_model", model)
        if len(self._seen_models) >= self.cfg.max_models:
            raise InvalidEvent("model_limit", f"more than {self.cfg.max_models} models")
        self._seen_models.add(model)

    def _value(self, value: Any, reason: str) -> Any:
        if isinstance(value, str):
            if len(value) > self.cfg.max_text_chars:
                raise InvalidEvent(reason, f"longer than {self.cfg.max_text_chars} characters")
            return value
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and math.isfinite(value):
            return value
        raise InvalidEvent(reason, type(value).__name__)

    @staticmethod
    def _errors_units(errors: Any, units: Any) -> tuple[float, float]:
        for v in (errors, units):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InvalidEvent("bad_errors_units", f"errors={errors!r} units={units!r}")
        return float(errors), float(units)
