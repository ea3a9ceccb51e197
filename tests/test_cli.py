"""The commands as a user runs them: replay, demo (with a scrape while it runs), bench."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from monitor.engine import Engine
from monitor.exposition import SliceCollector
from monitor.simulate import SpeechScenario
from monitor.table import slice_table
from tests.conftest import ROOT

LASTMILE = [sys.executable, "-m", "monitor"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def incident_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "speech.jsonl"
    path.write_bytes(b"\n".join(SpeechScenario(outcomes=120_000, seed=3).events()) + b"\n")
    return path


@pytest.mark.slow
def test_replay_writes_alerts_and_summary(incident_file, tmp_path) -> None:
    alerts_out, summary_out = tmp_path / "alerts.jsonl", tmp_path / "summary.json"
    run = subprocess.run(LASTMILE + ["replay", str(incident_file), "--config", str(ROOT / "config" / "asr.yaml"),
                                     "--alerts-out", str(alerts_out), "--summary-out", str(summary_out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    alerts = [json.loads(line) for line in alerts_out.read_text().splitlines()]
    assert alerts and all(a["state"] in ("firing", "resolved") for a in alerts)
    # the incident is one customer's new ward noise: every alert is about st-marys or ward-b
    for a in alerts:
        assert a["slice"].get("tenant") == "st-marys" or a["slice"].get("noise") == "ward-b", a["summary"]
    summary = json.loads(summary_out.read_text())
    assert {"model", "slice", "metric", "n", "value", "errors", "units"} <= set(summary["slices"][0])
    for row in summary["slices"]:
        assert row["value"] == pytest.approx(row["errors"] / row["units"])
    assert summary["pipeline"]["invalid"], "the scenario carries malformed lines; they are counted"
    assert "replayed" in run.stderr


def test_replay_of_a_missing_file_is_a_clear_error(tmp_path) -> None:
    run = subprocess.run(LASTMILE + ["replay", str(tmp_path / "nope.jsonl"), "--config", str(ROOT / "config" / "asr.yaml")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "no such file" in run.stderr


@pytest.mark.slow
def test_demo_serves_metrics_prints_alerts_and_finishes_in_a_minute(tmp_path) -> None:
    port = free_port()
    started = time.monotonic()
    report = tmp_path / "demo-report.html"
    proc = subprocess.Popen(LASTMILE + ["demo", "--port", str(port), "--seconds", "10", "--report", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scraped = ""
    try:
        while time.monotonic() - started < 60 and proc.poll() is None and "lastmile_slice_outcomes_total" not in scraped:
            try:
                scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 60
    assert 'lastmile_slice_outcomes_total{' in scraped and "lastmile_invalid_events_total" in scraped
    firing = [line for line in out.splitlines() if "FIRING" in line]
    assert firing and all("st-marys" in line or "ward-b" in line for line in firing), out
    assert "(all traffic)" in out and "accent=scottish" in out
    # issue 7: the demo shows ward-b as new, with an inherited baseline and a drift alert on it
    rows = final_slice_table(out)
    ward_b = rows.get("noise=ward-b")
    assert ward_b is not None, out
    assert ward_b["status"].startswith("new, "), ward_b
    # noise=ward-b's only ancestor is all traffic, and the source names it
    assert ward_b["baseline source"] == "from (all traffic)", ward_b
    kinds = re.search(r"\(([^)]*)\)$", ward_b["status"])  # the kinds firing on it at the end, e.g. (drift+disparity)
    assert kinds and "drift" in kinds.group(1).split("+"), ward_b
    assert any(re.search(r"\bFIRING\s+drift\s+.* for (?:the new condition )?noise=ward-b \(", line)
               for line in firing), out
    ending = re.search(r"^(\d+) alert\(s\) firing at the end, (\d+) of them paging", out, re.MULTILINE)
    assert ending, out
    assert 0 < int(ending.group(2)) < int(ending.group(1)), ending.group(0)
    # issue 9: the demo ends with the audit report, and says where it is
    assert f"the audit report: {report.resolve()}" in out and report.is_file() and report.with_suffix(".json").is_file()


def final_slice_table(out: str) -> dict[str, dict[str, str]]:
    """The demo's closing table, by slice name, with each row's baseline source and status cells.

    The text columns are left-aligned, so they are cut where their header starts; the slice name
    (words joined by single spaces) is everything before the right-aligned count that follows it.
    """
    lines = out.splitlines()
    at = next((i for i, line in enumerate(lines) if re.match(r"slice\s+n\s+value\s", line)), None)
    assert at is not None, out
    source, status = lines[at].index("baseline source"), lines[at].index("status")
    rows = {}
    for line in lines[at + 1:]:
        name = re.match(r"(\S.*?)\s+[\d,]+\s", line)
        if name is None or line.startswith("... "):  # the blank line after the table, or a "... more rows" note
            break
        rows[name.group(1)] = {"baseline source": line[source:status].strip(), "status": line[status:].strip()}
    assert rows, out
    return rows


def test_bench_prints_the_figures() -> None:
    run = subprocess.run(LASTMILE + ["bench", "--outcomes", "3000"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    for needle in ("decode only, msgspec.json.decode", "ratio engine / decode only", "outcomes/s",
                   "per tracked slice", "per pending prediction"):
        assert needle in run.stdout


def test_collector_exposes_a_consistent_snapshot() -> None:
    engine = Engine(parse_asr())
    lines = list(SpeechScenario(outcomes=3000, seed=1).events())
    engine.feed_many(lines)
    engine.flush()
    collector = SliceCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    assert registry.get_sample_value("lastmile_outcomes_total") is None  # nothing published yet
    table = slice_table(engine)
    collector.publish(table)
    engine.feed_many(list(SpeechScenario(outcomes=500, seed=2).events()))  # later work is not visible
    engine.flush()
    row = next(r for r in table["slices"] if r["slice"] == {"accent": "scottish"})
    labels = {"model": "asr-en", "metric": "wer", "combination": "accent", "accent": "scottish"}
    assert registry.get_sample_value("lastmile_slice_outcomes_total", labels) == row["n"]
    assert registry.get_sample_value("lastmile_slice_errors_total", labels) == row["errors"]
    assert registry.get_sample_value("lastmile_outcomes_total") == table["pipeline"]["outcomes"]
    assert registry.get_sample_value("lastmile_slice_alert_firing", {**labels, "kind": "drift"}) == 0.0
    assert registry.get_sample_value("lastmile_label_delay_seconds_count") == table["pipeline"]["join"]["joined"]


def parse_asr():
    from monitor.config import load_config

    return load_config(ROOT / "config" / "asr.yaml")

