"""``lastmile demo``: the embedded default, a seeded speech service with a last-mile incident.

No Kafka or other server is needed: the synthetic stream goes through the same engine as
``replay`` and ``run``, ``/metrics`` is served while it runs, alerts print as they fire, and a
per-slice table closes the run.
"""

from __future__ import annotations

import sys
import time
from importlib import resources
from typing import Any

from monitor.alerts import Alert
from monitor.config import ConfigError, load_config, parse_config
from monitor.engine import Engine
from monitor.simulate import INCIDENT_NOISE, INCIDENT_TENANT, SpeechScenario
from monitor.table import slice_table

_CHUNK = 4000  # events between snapshots / pacing checks


def builtin_config_text() -> str:
    """The built-in config (config/asr.yaml, shipped inside the package)."""
    return resources.files("monitor").joinpath("data/asr.yaml").read_text(encoding="utf-8")


def builtin_config() -> Any:
    import yaml

    return parse_config(yaml.safe_load(builtin_config_text()), "<built-in asr.yaml>")


def _fmt(x: float | None) -> str:
    return "    -" if x is None else f"{x:.3f}"


def _name(slice_: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in slice_.items()) or "(all traffic)"


def _baseline(row: dict[str, Any]) -> str:
    """Where the baseline came from: ``reference``, ``file``, or ``from <ancestor>`` when inherited."""
    source = row.get("baseline_source")
    if source == "inherited":
        return f"from {_name(row['baseline_from'])}"
    return source or "-"


def format_table(table: dict[str, Any], limit: int = 60) -> str:
    """One-way slices and every alerting or new slice, worst first within each group."""
    rows = [r for r in table["slices"] if len(r["slice"]) <= 1 or r["status"] == "alerting" or r.get("new")]
    rows.sort(key=lambda r: (r["status"] != "alerting", len(r["slice"]), list(r["slice"]), -(r["value"] or 0)))
    lines = [f"{'slice':40} {'n':>8} {'value':>6} {'window':>6} {'95% interval':>14} {'baseline':>8} "
             f"{'baseline source':30} status"]
    for r in rows[:limit]:
        w = r["window"]
        interval = f"[{_fmt(w['lower'])},{_fmt(w['upper'])}]" if w["lower"] is not None else ""
        status = ("new, " if r.get("new") else "") + r["status"] + (f" ({'+'.join(r['firing'])})" if r["firing"] else "")
        lines.append(f"{_name(r['slice'])[:40]:40} {r['n']:>8,} {_fmt(r['value']):>6} {_fmt(w['value']):>6} "
                     f"{interval:>14} {_fmt(r['baseline']):>8} {_baseline(r)[:30]:30} {status}")
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows (lastmile replay --summary-out gives them all)")
    return "\n".join(lines)


def run_demo(outcomes: int = 200_000, seed: int = 7, port: int = 9464, pace: float = 15.0,
             config_path: str | None = None, out: Any = None, report: str | None = None) -> int:
    """``report``: where to write the audit report at the end (None: not written)."""
    out = out or sys.stdout
    try:
        cfg = load_config(config_path) if config_path else builtin_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    engine = Engine(cfg)
    collector = server = None
    if port:
        from monitor.exposition import SliceCollector
        from monitor.server import Health, Server

        collector = SliceCollector()
        try:
            server = Server(collector, Health(assigned=True, restored=True, broker_ok=True), cfg.http.host, port).start()
            print(f"serving http://{cfg.http.host}:{port}/metrics (and /v1/slices, /v1/alerts) while the demo runs",
                  file=out)
        except OSError as exc:
            print(f"(metrics not served: port {port}: {exc.strerror}; use --port)", file=out)
            collector = None
    scenario = SpeechScenario(outcomes=outcomes, seed=seed)
    print(f"speech service '{scenario.model}': {outcomes:,} utterances, {len(scenario.accents)} accents, 5 customers; "
          f"half-way, {INCIDENT_TENANT} starts recording on a ward with new equipment (noise={INCIDENT_NOISE})\n",
          file=out)

    seen: list[Alert] = []

    def show(alerts: list[Alert]) -> None:
        seen.extend(alerts)
        for a in alerts:
            print(f"[{a.ts}] {a.state.upper():8} {a.kind:9} {a.summary}", file=out)

    started = time.monotonic()
    total = 0
    events = scenario.events()
    while True:
        chunk = [line for _, line in zip(range(_CHUNK), events)]
        if not chunk:
            break
        show(engine.feed_many(chunk))
        show(engine.flush())
        total += len(chunk)
        if collector is not None:
            collector.publish(slice_table(engine))
        if pace > 0:
            expected = pace * engine.outcomes / outcomes
            ahead = expected - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    table = slice_table(engine)
    if collector is not None:
        collector.publish(table)
    p = table["pipeline"]
    print(f"\n{total:,} events in {time.monotonic() - started:.1f}s: {p['outcomes']:,} outcomes, "
          f"{sum(p['invalid'].values()):,} invalid ({', '.join(f'{k}={v}' for k, v in p['invalid'].items())}), "
          f"{p['join']['pending']:,} still unlabelled, {sum(p['join']['duplicates'].values()):,} duplicates ignored\n",
          file=out)
    print(format_table(table), file=out)
    firing = table["alerts"]
    pages = sum(1 for a in firing if a["explained_by"] is None)
    print(f"\n{len(firing)} alert(s) firing at the end, {pages} of them paging (the rest are grouped under the "
          f"alert that explains them); tracked {p['slices']['tracked']} slices.", file=out)
    if report:
        from monitor.audit import build_report, write_report

        path = write_report(build_report(engine, seen, engine.bounty.take_records()), report)
        print(f"\nthe audit report: {path.resolve()} (open it in a browser; {path.with_suffix('.json').name} "
              f"beside it has the same content)", file=out)
    if server is not None:
        server.close()
    return 0
