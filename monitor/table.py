"""The slice table: the per-slice numbers as JSON (``--summary-out`` and ``GET /v1/slices``).

Built from one consistent copy of the engine's state, so a reader on another thread never
sees a half-updated batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from monitor import kernel as K
from monitor.alerts import rfc3339
from monitor.engine import Engine

#: two-sided normal quantile for the windowed estimate's pointwise 95% interval
_Z95 = 1.959964


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 9)


def window_interval(row: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """Windowed estimate and its 95% interval, with outcome-level (clustered) variance."""
    wu, wn = row[K.WU], row[K.WN]
    if wu <= 0 or wn <= 0:
        return None, None, None
    r = row[K.WE] / wu
    resid = max(row[K.WE2] - 2 * r * row[K.WEU] + r * r * row[K.WU2], 0.0)
    se = math.sqrt(row[K.WW] * resid / wn) / wu
    return _num(r), _num(max(r - _Z95 * se, 0.0)), _num(r + _Z95 * se)


def slice_rows(engine: Engine) -> list[dict[str, Any]]:
    st = engine.st[: len(engine.slices) * len(engine.metrics)].copy()
    out = []
    n_metrics = len(engine.metrics)
    for sid, key in enumerate(engine.slices.keys):
        desc = engine.slices.describe(sid)
        for m, metric in enumerate(engine.metrics):
            r = sid * n_metrics + m
            if r >= st.shape[0]:
                continue
            row = st[r]
            n = int(row[K.N])
            if n == 0:
                continue
            value, lower, upper = window_interval(row)
            status = "insufficient_data" if n < row[K.MIN_N] else "ok"
            firing = [kind for kind, f in (("drift", K.DSTATE), ("disparity", K.PSTATE)) if row[f] > 0]
            if firing:
                status = "alerting"
            out.append({
                "model": key.model,
                "slice": desc,
                "metric": metric,
                "n": n,
                "errors": _num(row[K.E]),
                "units": _num(row[K.U]),
                "value": _num(row[K.E] / row[K.U]) if row[K.U] > 0 else None,
                "window": {"value": value, "lower": lower, "upper": upper},
                "baseline": _num(row[K.BASE]),
                "status": status,
                "firing": firing,
            })
    return out


def slice_table(engine: Engine) -> dict[str, Any]:
    j = engine.joiner.stats
    return {
        "slices": slice_rows(engine),
        "alerts": [a.to_dict() for a in engine.active.values()],
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
                "tracked": len(engine.slices),
                "value_overflow": dict(engine.slices.value_overflow),
                "slice_overflow": engine.slices.slice_overflow,
            },
            "watermark": rfc3339(engine.watermark) if math.isfinite(engine.watermark) else None,
            "watermark_seconds": engine.watermark if math.isfinite(engine.watermark) else None,
        },
        "decision": {
            "false_alarms_per_million": engine.cfg.alerting.false_alarms_per_million,
            "threshold_log_arl": round(engine.h_fire, 4),
        },
    }
