"""The operator's stack end to end, all real processes on loopback:

broker → ``lastmile run`` → Prometheus (the shipped rules) → Alertmanager → a webhook receiver here.
A last-mile incident fires a slice alert that reaches the webhook, and resolves after the incident
ends; meanwhile every Grafana panel query, with its template variables substituted, returns data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from monitor.simulate import SpeechScenario
from tests.conftest import ROOT
from tests.kafka_harness import free_port, produce
from tests.receivers import PostCollector
from tests.test_daemon import DaemonProcess
from tests.test_deploy import tool

pytestmark = pytest.mark.slow
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "lastmile.json"
VARIABLES = {"$model": "asr-en", "$metric": "wer", "$combination": "tenant+accent", "$tenant": ".*",
             "$__rate_interval": "1m"}


class Webhook(PostCollector):
    """Alertmanager's webhook receiver: each POST carries a status and its alerts."""

    def alerts(self, status: str) -> list[dict]:
        return [a for msg in self.bodies for a in msg["alerts"] if a["status"] == status]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def prom_query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def check_dashboard(prom_port: int) -> None:
    dash = json.loads(DASHBOARD.read_text())
    empty = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = substitute(t["expr"])
            if not prom_query(prom_port, expr):
                empty.append(f"{panel['title']}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((?:(.+), )?(\w+)\)", var["query"]["query"])
        assert m, var["query"]["query"]
        selector, label = substitute(m.group(1) or ""), m.group(2)
        url = f"http://127.0.0.1:{prom_port}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": selector})
        with urllib.request.urlopen(url, timeout=10) as resp:
            values = json.loads(resp.read())["data"]
        assert values, f"template variable {var['name']} has no values"


def test_incident_pages_through_prometheus_and_alertmanager_then_resolves(broker, tmp_path) -> None:  # noqa: F811
    prometheus, alertmanager = tool("prometheus"), tool("prometheus-alertmanager")
    preds, fbs = broker.create_topics(4, "predictions", "feedback")
    topics = {"prediction": preds, "feedback": fbs}
    # the incident starts after asr.yaml's reference period (the model's first 50,000 outcomes)
    # (and leaves enough of the stream after it for the st-marys intersections to resolve)
    lines = list(SpeechScenario(outcomes=300_000, seed=31, incident_at=0.2, incident_until=0.4).events())
    cut = int(len(lines) * 0.4)
    # a replay of this stream resolves the first paged alert at 65.5% of its lines: the rest after
    # three quarters is not needed (and took a quarter of the test's time to produce and read)
    end = int(len(lines) * 0.75)
    produce(broker.bootstrap, topics, lines[:cut])  # through the end of the incident

    webhook = Webhook()
    daemon = DaemonProcess(broker, topics, tmp_path / "state", f"g-{tmp_path.name}").start()
    am_port, prom_port = free_port(), free_port()
    (tmp_path / "am.yml").write_text(f"""
route:
  receiver: test
  group_by: ['...']
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: {webhook.url}
        send_resolved: true
""")
    # the shipped rules, but a slice alert pages after 5 s of firing instead of 1 minute: the
    # pipeline is what is under test here (promtool's rule tests check the rules as shipped)
    shipped = (ROOT / "deploy" / "prometheus" / "rules" / "lastmile.rules.yml").read_text()
    assert shipped.count("for: 1m\n") == 2
    rules = tmp_path / "lastmile.rules.yml"
    rules.write_text(shipped.replace("for: 1m\n", "for: 5s\n"))
    (tmp_path / "prom.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{rules}]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]}}]
scrape_configs:
  - job_name: lastmile
    static_configs: [{{targets: ["127.0.0.1:{daemon.port}"]}}]
""")
    logs = [tmp_path / "alertmanager.log", tmp_path / "prometheus.log", daemon.log]
    am = start([alertmanager, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="], logs[0])
    prom = start([prometheus, f"--config.file={tmp_path / 'prom.yml'}", f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                  f"--web.listen-address=127.0.0.1:{prom_port}"], logs[1])
    try:
        def fired() -> list[dict]:  # slices of the customer whose ward got noisy keep their traffic afterwards
            return [a for a in webhook.alerts("firing") if a["labels"]["alertname"] == "LastmileSliceDrift"
                    and a["labels"].get("tenant") == "st-marys" and "noise" not in a["labels"]]

        wait_for(lambda: bool(fired()), 240, "a firing LastmileSliceDrift for st-marys at the webhook", logs)
        alert = fired()[0]
        assert alert["labels"]["severity"] == "page" and alert["labels"]["model"] == "asr-en"
        assert alert["annotations"]["runbook_url"].endswith("LastmileSliceDrift.md")
        assert f"wer drift for {alert['labels']['combination']} slice of asr-en" in alert["annotations"]["summary"]
        # a disparity for a slice the incident did not touch would be a false page
        for a in webhook.alerts("firing"):
            if a["labels"]["alertname"].startswith("LastmileSlice"):
                assert a["labels"].get("tenant") == "st-marys" or a["labels"].get("noise") == "ward-b", a["labels"]

        check_dashboard(prom_port)

        produce(broker.bootstrap, topics, lines[cut:end])  # the ward is quiet again

        def resolved() -> bool:  # the customer's own slice resolves first: it has the most outcomes
            paged = [a["labels"] for a in fired()]
            return any(a["labels"] in paged for a in webhook.alerts("resolved"))

        wait_for(resolved, 240, f"one of the alerts {[a['labels'] for a in fired()]} resolved at the webhook", logs)
    finally:
        for proc in (prom, am):
            proc.terminate()
            proc.wait(timeout=30)
        if daemon.proc and daemon.proc.poll() is None:
            daemon.terminate()
        shutil.rmtree(tmp_path / "prom-data", ignore_errors=True)
