"""Prometheus exposition: a custom collector over the latest published slice table.

The processing loop publishes an immutable snapshot (:func:`monitor.table.slice_table`)
between batches; ``collect()`` runs on the HTTP thread and only reads the snapshot it was
handed, so a scrape never sees a half-applied batch. A slice that disappears simply stops
being yielded (``Gauge.labels()`` children would live forever).
"""

from __future__ import annotations

import re
import threading
from typing import Any
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from monitor.join import LABEL_DELAY_BUCKETS

_RESERVED = {"model", "metric", "combination", "kind", "reason", "le", "job", "instance", "slice"}
_BAD = re.compile(r"[^a-zA-Z0-9_]")


def label_name(dimension: str) -> str:
    """A dimension as a Prometheus label name.

    >>> label_name("age-band"), label_name("model"), label_name("9lives")
    ('age_band', 'dim_model', 'dim_9lives')
    """
    name = _BAD.sub("_", dimension)
    if name in _RESERVED or name[:1].isdigit() or name.startswith("__"):
        name = f"dim_{name}"
    return name


def combination(slice_: dict[str, str]) -> str:
    return "+".join(slice_) if slice_ else "all"


class SliceCollector(Collector):
    def __init__(self) -> None:
        self._snapshot: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def publish(self, table: dict[str, Any]) -> None:
        with self._lock:
            self._snapshot = table

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            return self._snapshot

    def collect(self) -> Iterator[Any]:
        with self._lock:
            snap = self._snapshot
        if snap is None:
            return
        yield from _slice_families(snap["slices"])
        yield from _pipeline_families(snap["pipeline"])


def _slice_families(rows: list[dict[str, Any]]) -> Iterator[Any]:
    families = {
        "outcomes": CounterMetricFamily("lastmile_slice_outcomes", "Joined outcomes counted for the slice and metric."),
        "errors": CounterMetricFamily("lastmile_slice_errors", "Sum of errors (e.g. word edits) of the slice."),
        "units": CounterMetricFamily("lastmile_slice_units", "Sum of units (e.g. reference words) of the slice."),
        "window": GaugeMetricFamily("lastmile_slice_error_ratio", "Windowed error estimate (errors / units)."),
        "lower": GaugeMetricFamily("lastmile_slice_error_ratio_lower", "Lower bound of the windowed estimate's 95% interval."),
        "upper": GaugeMetricFamily("lastmile_slice_error_ratio_upper", "Upper bound of the windowed estimate's 95% interval."),
        "baseline": GaugeMetricFamily("lastmile_slice_baseline_ratio", "The slice's baseline (given or learned)."),
        "insufficient": GaugeMetricFamily("lastmile_slice_insufficient_data",
                                          "1 while the slice has fewer outcomes than min_samples."),
        "alert": GaugeMetricFamily("lastmile_slice_alert_firing", "1 while a drift/disparity alert fires for the slice."),
    }
    for row in rows:
        labels = {"model": row["model"], "metric": row["metric"], "combination": combination(row["slice"])}
        labels.update({label_name(k): v for k, v in row["slice"].items()})
        _add(families["outcomes"], labels, row["n"])
        _add(families["errors"], labels, row["errors"])
        _add(families["units"], labels, row["units"])
        w = row["window"]
        for key in ("value", "lower", "upper"):
            if w[key] is not None:
                _add(families["window" if key == "value" else key], labels, w[key])
        if row["baseline"] is not None:
            _add(families["baseline"], labels, row["baseline"])
        _add(families["insufficient"], labels, 1.0 if row["status"] == "insufficient_data" else 0.0)
        for kind in ("drift", "disparity"):
            _add(families["alert"], {**labels, "kind": kind}, 1.0 if kind in row["firing"] else 0.0)
    yield from families.values()


def _add(family: Any, labels: dict[str, str], value: float) -> None:
    """Label sets differ by combination, so each sample carries its own (add_metric assumes one set)."""
    name = family.name + "_total" if family.type == "counter" else family.name
    family.samples.append(Sample(name, labels, value))


def _pipeline_families(p: dict[str, Any]) -> Iterator[Any]:
    events = CounterMetricFamily("lastmile_events", "Valid events by type.", labels=["type"])
    for kind, count in p["events"].items():
        events.add_metric([kind], count)
    yield events
    invalid = CounterMetricFamily("lastmile_invalid_events", "Invalid events by reason (skipped).", labels=["reason"])
    for reason, count in p["invalid"].items():
        invalid.add_metric([reason], count)
    yield invalid
    yield CounterMetricFamily("lastmile_outcomes", "Joined outcomes scored.", value=p["outcomes"])
    j = p["join"]
    yield GaugeMetricFamily("lastmile_join_pending", "Predictions/feedback waiting for their other half.", value=j["pending"])
    expired = CounterMetricFamily("lastmile_join_expired", "Pending entries expired by TTL.", labels=["kind"])
    expired.add_metric(["unlabelled"], j["expired_unlabelled"])
    expired.add_metric(["orphan_feedback"], j["expired_orphan_feedback"])
    yield expired
    yield CounterMetricFamily("lastmile_join_evicted", "Pending entries evicted at capacity.", value=j["evicted"])
    dups = CounterMetricFamily("lastmile_join_duplicates", "Duplicate events ignored.", labels=["type"])
    for kind, count in j["duplicates"].items():
        dups.add_metric([kind], count)
    yield dups
    hist = j.get("label_delay_histogram")
    if hist:
        buckets, acc = [], 0
        for bound, count in zip([*map(str, LABEL_DELAY_BUCKETS), "+Inf"], hist["buckets"]):
            acc += count
            buckets.append((bound, acc))
        yield HistogramMetricFamily("lastmile_label_delay_seconds", "Feedback ts minus prediction ts.",
                                    buckets=buckets, sum_value=hist["sum"])
    s = p["slices"]
    yield GaugeMetricFamily("lastmile_slices_tracked", "Slices currently tracked.", value=s["tracked"])
    over = CounterMetricFamily("lastmile_dimension_overflow", "Outcomes whose value was mapped to __other__.",
                               labels=["dimension"])
    for dim, count in s["value_overflow"].items():
        over.add_metric([dim], count)
    yield over
    yield CounterMetricFamily("lastmile_slice_overflow", "Outcomes whose slice was over max_slices.",
                              value=s["slice_overflow"])
