"""Generate deploy/grafana/dashboards/lastmile.json (run from the repository root).

    python deploy/grafana/generate.py          # rewrite the dashboard
    python deploy/grafana/generate.py --check  # exit 1 if the committed file is not current (CI)

Every panel query is run against a real Prometheus that scraped the real daemon in
tests/test_stack.py, with the template variables substituted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).parent / "dashboards" / "lastmile.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SLICE = 'model="$model", metric="$metric"'
SLICE_LEGEND = "{{tenant}} {{accent}} {{noise}} {{device}} {{age_band}} {{gender}} {{region}}"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def panel(pid: int, title: str, kind: str, targets: list[dict], x: int, y: int, w: int = 12, h: int = 8,
          unit: str = "short", description: str = "", **extra: object) -> dict:
    p = {"id": pid, "title": title, "type": kind, "datasource": DS, "targets": targets,
         "gridPos": {"x": x, "y": y, "w": w, "h": h}, "description": description,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    p.update(extra)
    return p


def row(pid: int, title: str, y: int) -> dict:
    return {"id": pid, "title": title, "type": "row", "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "panels": []}


def variable(name: str, query: str, label: str, include_all: bool = False) -> dict:
    v = {"name": name, "label": label, "type": "query", "datasource": DS, "refresh": 2, "sort": 1,
         "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
         "includeAll": include_all, "multi": include_all}
    if include_all:
        v["allValue"] = ".*"
    return v


def dashboard() -> dict:
    panels = [
        row(1, "Overview: models and tenants", 0),
        panel(2, "Outcomes per second", "stat",
              [target(f'sum(rate(lastmile_slice_outcomes_total{{{SLICE}, combination="all"}}[$__rate_interval]))')],
              0, 1, w=6, h=4, unit="ops"),
        panel(3, "Error (whole model, 1h)", "stat",
              [target(f'sum(increase(lastmile_slice_errors_total{{{SLICE}, combination="all"}}[1h])) / '
                      f'sum(increase(lastmile_slice_units_total{{{SLICE}, combination="all"}}[1h]))')],
              6, 1, w=6, h=4, unit="percentunit"),
        panel(4, "Slice alerts firing", "stat",
              [target(f'sum(lastmile_slice_alert_firing{{{SLICE}}}) or vector(0)')], 12, 1, w=6, h=4),
        panel(5, "Slices tracked", "stat", [target('sum(lastmile_slices_tracked)')], 18, 1, w=6, h=4),
        panel(6, "Error by tenant", "timeseries",
              [target(f'sum by (tenant) (rate(lastmile_slice_errors_total{{{SLICE}, combination="tenant", tenant=~"$tenant"}}'
                      f'[$__rate_interval])) / sum by (tenant) (rate(lastmile_slice_units_total{{{SLICE}, '
                      f'combination="tenant", tenant=~"$tenant"}}[$__rate_interval]))', "{{tenant}}")],
              0, 5, w=24, unit="percentunit",
              description="Ratio of summed rates: errors / units, e.g. word edits over reference words."),
        row(7, "Slices", 13),
        panel(8, "Slice error with 95% interval and baseline ($combination)", "timeseries",
              [target(f'{name}{{{SLICE}, combination="$combination"}}', f"{legend} {SLICE_LEGEND}", ref)
               for name, legend, ref in (("lastmile_slice_error_ratio", "estimate", "A"),
                                         ("lastmile_slice_error_ratio_lower", "lower", "B"),
                                         ("lastmile_slice_error_ratio_upper", "upper", "C"),
                                         ("lastmile_slice_baseline_ratio", "baseline", "D"))],
              0, 14, w=24, h=10, unit="percentunit"),
        panel(9, "Disparity: slice minus whole model ($combination)", "heatmap",
              [target(f'lastmile_slice_error_ratio{{{SLICE}, combination="$combination"}} - on (model, metric) '
                      f'group_left lastmile_slice_error_ratio{{{SLICE}, combination="all"}}',
                      SLICE_LEGEND)],
              0, 24, w=12, h=10, unit="percentunit",
              options={"calculate": False, "yAxis": {"axisPlacement": "left"}, "color": {"scheme": "RdYlGn", "reverse": True}}),
        panel(10, "Active slice alerts", "table",
              [target(f'lastmile_slice_alert_firing{{{SLICE}}} == 1', ref="A", instant=True)],
              12, 24, w=12, h=10),
        panel(18, "Worst slices: SliceLine score (where to look; never alerted on)", "table",
              [target(f'sort_desc(topk(10, lastmile_slice_rank_score{{{SLICE}}}))', ref="A", instant=True)],
              0, 34, w=24, h=8,
              description="Effect against support on the sums every slice keeps (0.95·(rate/model rate − 1) − "
                          "0.05·(model outcomes/slice outcomes − 1)). The best-looking of many slices: not evidence; "
                          "alerts and bias-bounty verdicts are the tests."),
        row(11, "Pipeline health", 42),
        panel(12, "Consumer lag", "timeseries", [target('sum by (topic) (lastmile_consumer_lag)', "{{topic}}")],
              0, 43, w=8),
        panel(13, "Invalid events by reason", "timeseries",
              [target('sum by (reason) (rate(lastmile_invalid_events_total[$__rate_interval]))', "{{reason}}")],
              8, 43, w=8, unit="ops"),
        panel(14, "Join backlog", "timeseries",
              [target('sum(lastmile_join_pending)', "pending", "A"),
               target('sum by (kind) (rate(lastmile_join_expired_total[$__rate_interval]))', "expired {{kind}}/s", "B"),
               target('sum(rate(lastmile_join_evicted_total[$__rate_interval]))', "evicted/s", "C")],
              16, 43, w=8),
        panel(15, "Label delay (median, p90)", "timeseries",
              [target(f'histogram_quantile({q}, sum by (le) (rate(lastmile_label_delay_seconds_bucket[$__rate_interval])))',
                      f"p{round(q * 100)}", ref) for q, ref in ((0.5, "A"), (0.9, "B"))],
              0, 51, w=8, unit="s"),
        panel(16, "Checkpoint age", "timeseries", [target('max(lastmile_checkpoint_age_seconds)', "age")], 8, 51, w=8, unit="s"),
        panel(17, "Series budget", "timeseries",
              [target('sum(lastmile_slice_series_dropped)', "dropped", "A"),
               target('sum(lastmile_slice_series_budget)', "budget", "B")], 16, 51, w=8),
    ]
    return {
        "title": "lastmile: last-mile drift and disparity",
        "uid": "lastmile-overview",
        "tags": ["lastmile", "ml-monitoring"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
            variable("model", "label_values(lastmile_slice_outcomes_total, model)", "Model"),
            variable("metric", 'label_values(lastmile_slice_outcomes_total{model="$model"}, metric)', "Metric"),
            variable("tenant", 'label_values(lastmile_slice_outcomes_total{model="$model", combination="tenant"}, tenant)',
                     "Tenant", include_all=True),
            variable("combination", 'label_values(lastmile_slice_outcomes_total{model="$model"}, combination)', "Slices"),
            # any dimension value (accent=scottish, noise=ward-b, age_band=65+, ...) filters every panel
            {"name": "filters", "label": "Dimension values", "type": "adhoc", "datasource": DS},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is not current: run python deploy/grafana/generate.py", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
