"""`lastmile audit`: one self-contained HTML report (and its JSON) for an evaluator's data set.

It runs the same engine as ``lastmile replay`` over the files (so its numbers are replay's) and
shows, per dimension, each value's rate with the recent window's 95% interval and its
baseline; a heatmap of every tracked two-way intersection (cells with too little data shown as
such); the worst slices by SliceLine's score; the alert and verdict timeline; the guarantee in
words; and what was invalid or unlabelled. Plots are matplotlib figures inlined as SVG; the page
loads nothing from the network and runs no script. Every value from the data is escaped.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

from monitor.alerts import Alert
from monitor.engine import Engine
from monitor.ranking import top_slices
from monitor.table import slice_table

SECTIONS = ("summary", "dimensions", "intersections", "worst", "timeline", "guarantee")


def build_report(engine: Engine, alerts: list[Alert], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's content as plain data (written beside the HTML as JSON)."""
    table = slice_table(engine)
    metric = engine.metrics[0]
    rows = [r for r in table["slices"] if r["metric"] == metric]
    dims: dict[str, list[dict[str, Any]]] = {}
    pairs: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        keys = list(r["slice"])
        entry = {"model": r["model"], "slice": r["slice"], "n": r["n"], "value": r["value"], "window": r["window"],
                 "baseline": r["baseline"], "status": r["status"]}
        if len(keys) == 1 and keys[0] != "group":
            dims.setdefault(keys[0], []).append(entry)
        elif len(keys) == 2:
            pairs.setdefault(" × ".join(keys), []).append(entry)
    for entries in dims.values():
        entries.sort(key=lambda e: -(e["value"] or 0.0))
    j = table["pipeline"]["join"]
    return {
        "metric": metric,
        "summary": {"events": table["pipeline"]["events"], "invalid": table["pipeline"]["invalid"],
                    "outcomes": table["pipeline"]["outcomes"],
                    "unlabelled": j["expired_unlabelled"] + j["pending"], "orphan_feedback": j["expired_orphan_feedback"],
                    "duplicates": j["duplicates"], "slices": table["pipeline"]["slices"]["tracked"]},
        "dimensions": dims,
        "intersections": pairs,
        "worst": top_slices(table, 20, metrics=[metric]),
        "timeline": [a.to_dict() for a in alerts] + [v for v in verdicts if v["status"] != "pending"],
        "guarantee": {"false_alarms_per_million": engine.cfg.alerting.false_alarms_per_million,
                      "threshold_log_arl": table["decision"]["threshold_log_arl"],
                      "alpha": engine.cfg.submissions.alpha},
        "slices": table["slices"],
    }


# ---- rendering --------------------------------------------------------------------------------
def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or doctype


def _dimension_plot(dim: str, entries: list[dict[str, Any]], metric: str) -> str:
    import matplotlib.pyplot as plt

    shown = entries[:30]
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(shown) + 1.2))
    ys = list(range(len(shown)))[::-1]
    for y, e in zip(ys, shown):
        w = e["window"]
        if e["value"] is not None:
            ax.plot([e["value"]], [y], "o", color="#1f5fa8")
        if w["lower"] is not None:
            ax.plot([w["lower"], w["upper"]], [y, y], "-", color="#1f5fa8", alpha=0.5, linewidth=3)
        if e["baseline"] is not None:
            ax.plot([e["baseline"]], [y], "|", color="#c0392b", markersize=14)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{e['slice'][dim][:30]} (n={e['n']:,})" for e in shown])
    ax.set_xlabel(f"{metric}: rate (dot), recent 95% interval (bar), baseline (red tick)")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _heatmap(name: str, entries: list[dict[str, Any]], metric: str) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    d1, d2 = name.split(" × ")
    v1 = sorted({e["slice"][d1] for e in entries})[:25]
    v2 = sorted({e["slice"][d2] for e in entries})[:25]
    grid = np.full((len(v1), len(v2)), np.nan)
    thin = np.zeros_like(grid, dtype=bool)
    for e in entries:
        a, b = e["slice"][d1], e["slice"][d2]
        if a in v1 and b in v2 and e["value"] is not None:
            grid[v1.index(a), v2.index(b)] = e["value"]
            thin[v1.index(a), v2.index(b)] = e["status"] == "insufficient_data"
    fig, ax = plt.subplots(figsize=(0.45 * len(v2) + 3, 0.35 * len(v1) + 1.5))
    shown = np.where(thin, np.nan, grid)
    image = ax.imshow(shown, cmap="OrRd", aspect="auto")
    for i in range(len(v1)):
        for k in range(len(v2)):
            if thin[i, k]:
                ax.text(k, i, "thin", ha="center", va="center", fontsize=6, color="#777777")
            elif np.isnan(grid[i, k]):
                ax.text(k, i, "–", ha="center", va="center", fontsize=6, color="#aaaaaa")
    ax.set_xticks(range(len(v2)))
    ax.set_xticklabels([v[:18] for v in v2], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(v1)))
    ax.set_yticklabels([v[:24] for v in v1], fontsize=7)
    ax.set_xlabel(d2)
    ax.set_ylabel(d1)
    fig.colorbar(image, ax=ax, label=metric)
    return _svg(fig)


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _slice_text(s: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items()) or "(all traffic)"


def render_html(report: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    e = html.escape
    metric = report["metric"]
    s = report["summary"]
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>lastmile audit</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 8px;"
             "text-align:left}th{background:#f3f5f8}section{margin-bottom:2.5em}svg{max-width:100%;height:auto}"
             ".num{text-align:right}</style></head><body>",
             f"<h1>lastmile audit — {e(metric)}</h1>"]
    invalid = "".join(f"<li>{e(k)}: {v:,}</li>" for k, v in sorted(s["invalid"].items())) or "<li>none</li>"
    parts.append(f"<section id='summary'><h2>What was read</h2><p>{s['outcomes']:,} outcomes in "
                 f"{s['slices']:,} tracked slices; {s['unlabelled']:,} predictions without a label; "
                 f"{s['orphan_feedback']:,} labels without a prediction.</p><p>Events by kind: "
                 f"{e(', '.join(f'{k} {v:,}' for k, v in sorted(s['events'].items())))}.</p>"
                 f"<p>Invalid events, by reason:</p><ul>{invalid}</ul></section>")
    parts.append("<section id='dimensions'><h2>Each value of each dimension</h2>")
    for dim, entries in sorted(report["dimensions"].items()):
        parts.append(f"<h3>{e(dim)}</h3>{_dimension_plot(dim, entries, metric)}")
    parts.append("</section><section id='intersections'><h2>Two-way intersections</h2><p>Cells marked "
                 "<em>thin</em> have too few outcomes to judge (insufficient data); – means never seen.</p>")
    for name, entries in sorted(report["intersections"].items()):
        parts.append(f"<h3>{e(name)}</h3>{_heatmap(name, entries, metric)}")
    rows = "".join(f"<tr><td class='num'>{x['score']:.3f}</td><td>{e(_slice_text(x['slice']))}</td>"
                   f"<td class='num'>{x['n']:,}</td><td class='num'>{_fmt(x['value'])}</td>"
                   f"<td class='num'>{_fmt(x['rest'])}</td><td class='num'>{_fmt(x['gap'])}</td>"
                   f"<td class='num'>[{_fmt(x['window']['lower'])}, {_fmt(x['window']['upper'])}]</td></tr>"
                   for x in report["worst"])
    parts.append("</section><section id='worst'><h2>Worst slices (SliceLine score)</h2><p>Ranked by effect "
                 "against support. This is where to look, not evidence: alerts and verdicts are the tests."
                 "</p><table><tr><th>score</th><th>slice</th><th>n</th><th>rate</th><th>rest</th><th>gap</th>"
                 f"<th>recent 95% interval</th></tr>{rows}</table></section>")
    events = sorted(report["timeline"], key=lambda t: t.get("ts") or t.get("decided") or "")
    items = "".join(
        f"<tr><td>{e(t.get('ts') or t.get('decided') or '')}</td><td>{e(t.get('state', t.get('status', '')))}</td>"
        f"<td>{e(t.get('kind', 'verdict'))}</td><td>{e(t.get('summary') or t.get('group_text', ''))}</td></tr>"
        for t in events[:500])
    parts.append("<section id='timeline'><h2>Alerts and verdicts, in time</h2><table><tr><th>time</th>"
                 f"<th>state</th><th>kind</th><th>what</th></tr>{items or '<tr><td colspan=4>none</td></tr>'}"
                 "</table></section>")
    g = report["guarantee"]
    parts.append(
        "<section id='guarantee'><h2>What the alerts and verdicts guarantee</h2><p>For each model, the expected "
        f"number of false alerts is at most {g['false_alarms_per_million']:g} per million outcomes, over all its "
        "slices together (a false alert: a slice fired while its rate was no worse than its baseline, or the rest, "
        f"plus the tolerance); alert threshold ln(ARL) = {g['threshold_log_arl']}. Bias-bounty verdicts: the "
        f"expected share of false confirmations among all confirmations is at most {g['alpha']:g}; "
        "<em>not confirmed</em> is not <em>no bias</em>. The ranking above is exploration and guarantees nothing."
        "</p></section></body></html>")
    return "".join(parts)


def run_audit(files: list[str], config: str, out: str, progress: bool | None = None) -> int:
    from monitor.config import load_config
    from monitor.replay import replay

    engine = Engine(load_config(config))
    alerts = replay(engine, [Path(f) for f in files], progress=progress)
    path = write_report(build_report(engine, alerts, engine.bounty.take_records()), out)
    print(f"lastmile audit: wrote {path} and {path.with_suffix('.json')}")
    return 0


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    """The HTML at ``out`` and the same content as JSON beside it."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return path
