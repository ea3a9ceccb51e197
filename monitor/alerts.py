"""Alert records: what replay writes as JSONL and what every sink derives its payload from."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

_PART_OF = "; part of the incident on "
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


def metric_title(metric: str) -> str:
    """How a metric is named in summaries (``wer`` → ``WER``)."""
    return _METRIC_TITLES.get(metric, metric)


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
    #: drift: where the baseline came from, ``file`` | ``reference`` | ``inherited``
    baseline_source: str | None = None
    #: inherited baselines: the ancestor slice whose own baseline this slice is held to
    baseline_from: dict[str, str] | None = None
    #: a new condition (first seen after its model's reference period): when it was first seen
    first_seen: str | None = None
    #: an already-firing alert on an ancestor slice explains this one (same outcomes, or the
    #: ancestor's rate inside this slice's interval): it is grouped under it and pages no one
    explained_by: dict[str, str] | None = None
    #: fingerprint of the alert that pages for this cause (its own when nothing explains it)
    incident: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def regrouped(self, explained_by: dict[str, str] | None, incident: str | None, ts: float) -> Alert:
        """The same firing alert under another cause (or none: it then pages), as of ``ts``."""
        summary = self.summary.split(_PART_OF)[0]
        if explained_by is not None:
            summary += f"{_PART_OF}{describe_slice(explained_by)}"
        return replace(self, ts=rfc3339(ts), summary=summary, explained_by=explained_by,
                       incident=incident or self.fingerprint)

    @staticmethod
    def make(kind: str, state: str, model: str, slice_: dict[str, str], metric: str, value: float,
             reference: float, n: int, ts: float, tolerance: float, *, baseline_source: str | None = None,
             baseline_from: dict[str, str] | None = None, first_seen: float | None = None,
             explained_by: dict[str, str] | None = None, incident: str | None = None) -> Alert:
        title = metric_title(metric)
        if kind != "drift":
            against = "the rest"
        elif baseline_source == "inherited" and baseline_from is not None:
            against = f"the baseline inherited from {describe_slice(baseline_from)}"
        else:
            against = "its baseline" + (" (baseline file)" if baseline_source == "file" else "")
        where = describe_slice(slice_)
        if first_seen is not None:
            where = f"the new condition {where} (first seen {rfc3339(first_seen)})"
        verb = "is" if state == "firing" else "is back to"
        summary = (f"{title} for {where} ({model}) {verb} {value:.3f} vs {reference:.3f} for {against} "
                   f"(n={n:,})")
        if explained_by is not None:
            summary += f"{_PART_OF}{describe_slice(explained_by)}"
        fp = fingerprint(model, slice_, kind, metric)
        return Alert(kind, state, model, dict(slice_), metric, round(value, 6), round(reference, 6), n, rfc3339(ts),
                     fp, tolerance, summary, baseline_source, baseline_from,
                     rfc3339(first_seen) if first_seen is not None else None, explained_by, incident or fp)
