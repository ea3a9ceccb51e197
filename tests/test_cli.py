"""The commands as a user runs them: replay, demo (with a scrape while it runs), bench."""

from __future__ import annotations

import json
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
def test_demo_serves_metrics_prints_alerts_and_finishes_in_a_minute() -> None:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(LASTMILE + ["demo", "--port", str(port), "--seconds", "10"],
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

