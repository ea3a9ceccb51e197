"""The slice table: the per-slice numbers as JSON (``--summary-out`` and ``GET /v1/slices``).

Built from one consistent copy of the engine's state, so a reader on another thread never
sees a half-updated batch.
"""

from __future__ import annotations

import math
from typing import Any

from monitor.rows import F, window_interval
from monitor.alerts import fingerprint, rfc3339
from monitor.engine import Engine

def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 9)


def slice_rows(engine: Engine) -> list[dict[str, Any]]:
    n_metrics = len(engine.metrics)
    st = engine.st[: len(engine.slices) * n_metrics].copy()
    out = []
    for sid in engine.slices.live():
        key = engine.slices.keys[sid]
        desc = engine.slices.describe(sid)
        for m, metric in enumerate(engine.metrics):
            r = sid * n_metrics + m
            if r >= st.shape[0]:
                continue
            row = st[r]
            n = int(row[F.N])
            if n == 0:
                continue
            window = window_interval(row)
            value, lower, upper = (_num(x) for x in window) if window is not None else (None, None, None)
            status = "insufficient_data" if n < row[F.MIN_N] else "ok"
            firing = [kind for kind, f in (("drift", F.DSTATE), ("disparity", F.PSTATE)) if row[f] > 0]
            if firing:
                status = "alerting"
            prov = engine.provenance(sid, m, st)
            explained = {}  # firing kinds grouped under the alert that explains them
            for kind in firing:
                alert = engine.active.get(fingerprint(key.model, desc, kind, metric))
                if alert is not None and alert.explained_by is not None:
                    explained[kind] = alert.explained_by
            out.append({
                "model": key.model,
                "slice": desc,
                "metric": metric,
                "n": n,
                "errors": _num(row[F.E]),
                "units": _num(row[F.U]),
                "value": _num(row[F.E] / row[F.U]) if row[F.U] > 0 else None,
                "window": {"value": value, "lower": lower, "upper": upper},
                "baseline": _num(row[F.BASE]),
                "baseline_source": prov.source,
                "baseline_from": prov.ancestor,
                "new": prov.first_seen is not None,
                "first_seen": rfc3339(row[F.FIRST]) if math.isfinite(row[F.FIRST]) else None,
                "status": status,
                "firing": firing,
                "explained_by": explained,
            })
    return out


def slice_table(engine: Engine) -> dict[str, Any]:
    j = engine.joiner.stats
    return {
        "slices": slice_rows(engine),
        "alerts": [a.to_dict() for a in engine.active.values()],
        "submissions": [h.record() for h in engine.bounty.hypotheses.values()],
        "pipeline": {
            "events": dict(sorted(engine.events.items())),
            "invalid": dict(sorted(engine.invalid.items())),
            "outcomes": engine.outcomes,
            "held_for_event_time_order": engine.held,
            "join": {
                "joined": j.joined,
                "outcome_events": j.outcomes_direct,
                "pending": engine.joiner.pending,
                "expired_unlabelled": j.expired_unlabelled,
                "expired_orphan_feedback": j.expired_orphan,
                "evicted": j.evicted,
                "duplicates": dict(j.duplicates),
                "label_delay_seconds_mean": (j.label_delay_sum / j.label_delay_count) if j.label_delay_count else None,
                "label_delay_histogram": {"buckets": list(j.label_delay_buckets), "sum": j.label_delay_sum},
            },
            "slices": {
                "tracked": len(engine.slices.live()),
                "value_overflow": dict(engine.slices.value_overflow),
                "values_retired": dict(engine.slices.retired),
                "slice_overflow": engine.slices.slice_overflow,
                "slices_retired": engine.slices.slices_retired,
            },
            "submissions": engine.bounty.counts(),
            "watermark": rfc3339(engine.watermark) if math.isfinite(engine.watermark) else None,
            "watermark_seconds": engine.watermark if math.isfinite(engine.watermark) else None,
        },
        "decision": {
            "false_alarms_per_million": engine.cfg.alerting.false_alarms_per_million,
            "threshold_log_arl": round(engine.h_fire, 4),
            "threshold_log_arl_pinned": round(engine.h_pinned, 4) if engine.cfg.submissions.pin else None,
        },
    }
