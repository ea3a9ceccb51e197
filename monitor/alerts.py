"""Alert records: what replay writes as JSONL and what every sink derives its payload from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

_METRIC_TITLES = {"wer": "WER", "cer": "CER", "error_rate": "Error rate", "fpr": "FPR", "fnr": "FNR",
                  "abs_error": "Mean absolute error", "squared_error": "Mean squared error"}


def fingerprint(model: str, slice_: dict[str, str], kind: str, metric: str) -> str:
    """Stable id of one alert series: the same model/slice/kind/metric always gives the same value.

    >>> fingerprint("asr-en", {"accent": "scottish"}, "drift", "wer")
    '9428e897701f35c3'
    """
    body = json.dumps([model, sorted(slice_.items()), kind, metric], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_slice(slice_: dict[str, str]) -> str:
    if not slice_:
        return "all traffic"
    tenant = slice_.get("tenant")
    rest = ", ".join(f"{k}={v}" for k, v in slice_.items() if k != "tenant")
    if tenant is None:
        return rest
    return f"{rest} at {tenant}" if rest else f"tenant {tenant}"


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str  # "drift" | "disparity"
    state: str  # "firing" | "resolved"
    model: str
    slice: dict[str, str]
    metric: str
    value: float  # the slice's windowed estimate at the transition
    reference: float  # drift: the baseline; disparity: the rest of the model (windowed)
    n: int  # outcomes of the slice so far
    ts: str  # event time of the transition (RFC 3339)
    fingerprint: str
    tolerance: float
    summary: str = field(default="")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def make(kind: str, state: str, model: str, slice_: dict[str, str], metric: str, value: float,
             reference: float, n: int, ts: float, tolerance: float) -> Alert:
        title = _METRIC_TITLES.get(metric, metric)
        against = "its baseline" if kind == "drift" else "the rest"
        where = describe_slice(slice_)
        verb = "is" if state == "firing" else "is back to"
        summary = (f"{title} for {where} ({model}) {verb} {value:.3f} vs {reference:.3f} for {against} "
                   f"(n={n:,})")
        return Alert(kind, state, model, dict(slice_), metric, round(value, 6), round(reference, 6), n, rfc3339(ts),
                     fingerprint(model, slice_, kind, metric), tolerance, summary)
