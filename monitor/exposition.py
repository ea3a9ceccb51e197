"""Prometheus exposition: a custom collector over the latest published slice table.

The processing loop publishes an immutable snapshot (:func:`monitor.table.slice_table`)
between batches; ``collect()`` runs on the HTTP thread and only reads the snapshot it was
handed, so a scrape never sees a half-applied batch. A slice that disappears simply stops
being yielded (``Gauge.labels()`` children would live forever).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from monitor.join import LABEL_DELAY_BUCKETS
from monitor.ranking import top_slices

RANKED = 20  # slices exported with their rank score

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


#: series one slice row yields at most: outcomes, errors, units, ratio, lower, upper, baseline, insufficient,
#: 2 × alert firing, 2 × alert explained
SERIES_PER_ROW = 12


class SliceCollector(Collector):
    def __init__(self, series_budget: int = 50_000) -> None:
        self.series_budget = series_budget
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
        rows = snap["slices"]
        keep = max(self.series_budget // SERIES_PER_ROW, 0)
        if len(rows) > keep:  # alerting slices first, then the ones with most outcomes
            rows = sorted(rows, key=lambda r: (r["status"] != "alerting", -r["n"]))[:keep]
        yield from _slice_families(rows)
        yield GaugeMetricFamily("lastmile_slice_series_budget", "Most per-slice series exported (http.series_budget).",
                                value=self.series_budget)
        yield GaugeMetricFamily("lastmile_slice_series_dropped", "Per-slice series left out by the budget right now.",
                                value=(len(snap["slices"]) - len(rows)) * SERIES_PER_ROW)
        yield _ranking_family(snap)
        yield from _pipeline_families(snap["pipeline"])
        if "daemon" in snap:
            yield from _daemon_families(snap["daemon"])


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
        "explained": GaugeMetricFamily("lastmile_slice_alert_explained",
                                       "Present (1) while the slice's firing alert is explained by another firing alert "
                                       "(same slice, or an ancestor) and is grouped under it instead of paging."),
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
        for kind in row.get("explained_by", {}):
            _add(families["explained"], {**labels, "kind": kind}, 1.0)
    yield from families.values()


def _ranking_family(snap: dict[str, Any]) -> Any:
    """The worst slices by SliceLine score (monitor.ranking): the top ``RANKED`` only, so the
    series stay few. Shown on the dashboard, never alerted on."""
    family = GaugeMetricFamily("lastmile_slice_rank_score",
                               "SliceLine score of the worst slices (effect against support): where to look, "
                               "never an alert.")
    for entry in top_slices(snap, RANKED):
        labels = {"model": entry["model"], "metric": entry["metric"], "combination": combination(entry["slice"])}
        labels.update({label_name(k): v for k, v in entry["slice"].items()})
        _add(family, labels, entry["score"])
    return family


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
    yield GaugeMetricFamily("lastmile_outcomes_held", "Joined outcomes waiting for the event-time watermark.",
                            value=p.get("held_for_event_time_order", 0))
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
    if p.get("watermark_seconds") is not None:
        yield GaugeMetricFamily("lastmile_watermark_timestamp_seconds",
                                "Largest event time processed (time() minus this is the processing delay).",
                                value=p["watermark_seconds"])
    if p.get("submissions"):
        subs = GaugeMetricFamily("lastmile_submissions", "Bias-bounty hypotheses by verdict (pending, confirmed, "
                                 "not_confirmed, refuted, untestable).", labels=["state"])
        for state, count in p["submissions"].items():
            subs.add_metric([state], count)
        yield subs
    s = p["slices"]
    yield GaugeMetricFamily("lastmile_slices_tracked", "Slices currently tracked.", value=s["tracked"])
    over = CounterMetricFamily("lastmile_dimension_overflow", "Outcomes whose value was mapped to __other__.",
                               labels=["dimension"])
    for dim, count in s["value_overflow"].items():
        over.add_metric([dim], count)
    yield over
    retired = CounterMetricFamily("lastmile_values_retired", "Dimension values that faded and gave up their "
                                  "place to a more frequent one (their slices were retired).", labels=["dimension"])
    for dim, count in s["values_retired"].items():
        retired.add_metric([dim], count)
    yield retired
    yield CounterMetricFamily("lastmile_slice_overflow", "Outcomes whose slice was over max_slices.",
                              value=s["slice_overflow"])
    yield CounterMetricFamily("lastmile_slices_retired", "Slices that faded and gave up their place under "
                              "max_slices to a more frequent one.", value=s["slices_retired"])


def _daemon_families(d: dict[str, Any]) -> Iterator[Any]:
    lag = GaugeMetricFamily("lastmile_consumer_lag", "Messages behind the end of the partition.",
                            labels=["topic", "partition"])
    for row in d["lag"]:
        lag.add_metric([row["topic"], str(row["partition"])], row["lag"])
    yield lag
    yield GaugeMetricFamily("lastmile_partitions_paused", "Partitions paused for running ahead in event time.",
                            value=len(d["paused"]))
    msgs = CounterMetricFamily("lastmile_messages", "Kafka messages consumed, by topic and result.",
                               labels=["topic", "result"])
    for row in d["messages"]:
        msgs.add_metric([row["topic"], row["result"]], row["count"])
    yield msgs
    c = d["checkpoint"]
    if c["count"]:
        yield GaugeMetricFamily("lastmile_checkpoint_age_seconds", "Seconds since the last durable checkpoint.",
                                value=max(time.time() - c["last_wall"], 0.0))
        yield GaugeMetricFamily("lastmile_checkpoint_duration_seconds", "Time the last checkpoint took to write.",
                                value=c["duration"])
        yield GaugeMetricFamily("lastmile_checkpoint_bytes", "Size of the last checkpoint.", value=c["bytes"])
    yield CounterMetricFamily("lastmile_checkpoints", "Checkpoints written.", value=c["count"])
    yield GaugeMetricFamily("lastmile_batch_processing_seconds", "Wall time the last polled batch took to process.",
                            value=d["batch_seconds"])
    deliveries = CounterMetricFamily("lastmile_alert_deliveries", "Alert deliveries by sink and result "
                                     "(delivered, retried, rejected, gave_up, dropped).", labels=["sink", "result"])
    for row in d.get("deliveries", []):
        deliveries.add_metric([row["sink"], row["result"]], row["count"])
    yield deliveries
    yield GaugeMetricFamily("lastmile_alert_outbox", "Alert deliveries waiting (retries included).",
                            value=d.get("outbox", 0))
