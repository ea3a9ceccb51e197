"""Alert sinks against local servers that implement each API's documented contract."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from monitor.alerts import Alert
from monitor.delivery import Dispatcher
from monitor.sinks import AlertingLinks, DeliveryConfig, Secret, SinkConfig, build_sink

KEY = "R0UTING-KEY-0123456789abcdef"
FAST = DeliveryConfig(backoff_initial_seconds=0.02, backoff_max_seconds=0.1, max_attempts=6, resend_seconds=0.3)


class FakeAPI:
    """One HTTP server; ``handle(path, headers, body) -> (status, body, headers)``; can fail on purpose."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, Any]] = []
        self.fail_next: list[int] = []  # statuses to answer before behaving
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                outer.requests.append((self.path, dict(self.headers), body))
                if outer.fail_next:
                    status, payload, extra = outer.fail_next.pop(0), {"message": "try later"}, {"Retry-After": "0"}
                else:
                    status, payload, extra = outer.handle(self.path, dict(self.headers), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def handle(self, path: str, headers: dict, body: Any) -> tuple[int, Any, dict]:
        raise NotImplementedError


def rfc3339(text: str) -> bool:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None
    except (ValueError, AttributeError):
        return False


class FakePagerDuty(FakeAPI):
    """Events API v2: 202 for a valid event; 400 'invalid event' otherwise; incidents by dedup_key."""

    def __init__(self) -> None:
        super().__init__()
        self.incidents: dict[str, str] = {}  # dedup_key → "triggered" | "resolved"
        self.triggers = 0

    def handle(self, path, headers, body):
        errors = []
        if path != "/v2/enqueue":
            return 404, {"message": "not found"}, {}
        if not isinstance(body, dict) or body.get("routing_key") != KEY:
            errors.append("invalid routing key")
        action = body.get("event_action") if isinstance(body, dict) else None
        if action not in ("trigger", "acknowledge", "resolve"):
            errors.append("event_action")
        if action == "trigger":
            p = body.get("payload") or {}
            if not p.get("summary") or not p.get("source") or p.get("severity") not in ("critical", "error", "warning", "info"):
                errors.append("payload.summary, payload.source and payload.severity are required")
            if p.get("timestamp") and not rfc3339(p["timestamp"]):
                errors.append("payload.timestamp")
        elif not (body or {}).get("dedup_key"):
            errors.append("dedup_key is required to resolve")
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}, {}
        key = body.get("dedup_key")
        if action == "trigger":
            self.triggers += 1
            if self.incidents.get(key) != "triggered":
                self.incidents[key] = "triggered"
        elif key in self.incidents:
            self.incidents[key] = "resolved"
        return 202, {"status": "success", "message": "Event processed", "dedup_key": key}, {}


class FakeOpsgenie(FakeAPI):
    """Alert API v2: GenieKey auth; create with alias (deduplicated while open); close by alias."""

    def __init__(self) -> None:
        super().__init__()
        self.alerts: dict[str, dict] = {}

    def handle(self, path, headers, body):
        if headers.get("Authorization") != f"GenieKey {KEY}":
            return 401, {"message": "Could not authenticate"}, {}
        if path == "/v2/alerts":
            if not body.get("message") or len(body["message"]) > 130:
                return 422, {"message": "message must be 1-130 characters"}, {}
            alert = self.alerts.setdefault(body["alias"], {"status": "open", "count": 0, "message": body["message"]})
            alert["status"], alert["count"] = "open", alert["count"] + 1
            return 202, {"result": "Request will be processed", "requestId": "r1"}, {}
        if path.startswith("/v2/alerts/") and path.endswith("/close?identifierType=alias"):
            alias = path.split("/")[3]
            if alias in self.alerts:
                self.alerts[alias]["status"] = "closed"
            return 202, {"result": "Request will be processed", "requestId": "r2"}, {}
        return 404, {"message": "not found"}, {}


class FakeAlertmanager(FakeAPI):
    """API v2 POST /api/v2/alerts: a list of postable alerts; 400 if one is malformed."""

    def __init__(self) -> None:
        super().__init__()
        self.alerts: dict[tuple, dict] = {}

    def handle(self, path, headers, body):
        if path != "/api/v2/alerts" or not isinstance(body, list):
            return 400, "expected a list of alerts", {}
        for a in body:
            if not a.get("labels") or "alertname" not in a["labels"] or not rfc3339(a.get("startsAt", "")):
                return 400, "labels with alertname and startsAt are required", {}
            if "endsAt" in a and not rfc3339(a["endsAt"]):
                return 400, "endsAt", {}
            self.alerts[tuple(sorted(a["labels"].items()))] = a
        return 200, "", {}


class FakeSlack(FakeAPI):
    def handle(self, path, headers, body):
        if not isinstance(body, dict) or not body.get("text"):
            return 400, "no_text", {}
        return 200, "ok", {}


class FakeWebhook(FakeAPI):
    def handle(self, path, headers, body):
        return 200, {}, {}


def alert(state: str, ts: str, kind: str = "drift") -> dict:
    return Alert.make(kind, state, "asr-en", {"tenant": "st-marys", "accent": "scottish"}, "wer",
                      0.21 if state == "firing" else 0.12, 0.12, 1432, datetime.fromisoformat(ts).timestamp(),
                      0.03).to_dict()


def wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    assert predicate()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("TEST_KEY", KEY)
    return Secret(env="TEST_KEY")


def dispatcher(*sinks: SinkConfig, cfg: DeliveryConfig = FAST) -> Dispatcher:
    links = AlertingLinks(dashboard="https://grafana.example/d/lastmile-overview?var-model={model}")
    return Dispatcher([build_sink(s) for s in sinks], cfg, links, seed=1).start()


FIRING = alert("firing", "2026-11-24T12:00:00+00:00")
RESOLVED = alert("resolved", "2026-11-24T14:00:00+00:00")


def test_pagerduty_triggers_once_and_resolves_with_a_stable_dedup_key(key_env) -> None:
    pd = FakePagerDuty()
    d = dispatcher(SinkConfig(name="pd", type="pagerduty", url=pd.url + "/v2/enqueue", secret=key_env))
    d.submit(FIRING)
    d.submit(FIRING)  # the same transition twice (e.g. redone after a restart)
    wait(lambda: pd.triggers >= 1)
    d.submit(RESOLVED)
    wait(lambda: pd.incidents.get(FIRING["fingerprint"]) == "resolved")
    d.stop()
    assert pd.incidents == {FIRING["fingerprint"]: "resolved"}
    trigger = next(b for _, _, b in pd.requests if b["event_action"] == "trigger")
    assert "WER for accent=scottish at st-marys (asr-en) is 0.210 vs 0.120" in trigger["payload"]["summary"]
    assert {link["text"] for link in trigger["links"]} == {"runbook", "dashboard"}
    assert d.stats[("pd", "delivered")] == 2


def test_opsgenie_creates_by_alias_and_closes(key_env) -> None:
    og = FakeOpsgenie()
    d = dispatcher(SinkConfig(name="og", type="opsgenie", url=og.url, secret=key_env))
    d.submit(FIRING)
    wait(lambda: og.alerts.get(FIRING["fingerprint"], {}).get("status") == "open")
    d.submit(RESOLVED)
    wait(lambda: og.alerts[FIRING["fingerprint"]]["status"] == "closed")
    d.stop()
    assert len(og.alerts) == 1


def test_alertmanager_gets_v2_alerts_resent_while_firing_and_an_end(key_env) -> None:
    am = FakeAlertmanager()
    d = dispatcher(SinkConfig(name="am", type="alertmanager", url=am.url))
    d.submit(FIRING)
    wait(lambda: len(am.requests) >= 3)  # re-sent every resend_seconds while it fires
    d.submit(RESOLVED)
    wait(lambda: any("endsAt" in a for a in am.alerts.values()))
    d.stop()
    (posted,) = am.alerts.values()
    assert posted["labels"]["alertname"] == "LastmileSliceDrift" and posted["labels"]["accent"] == "scottish"
    assert posted["labels"]["severity"] == "page" and posted["generatorURL"].startswith("https://grafana.example/")
    assert posted["startsAt"] == FIRING["ts"] and posted["endsAt"] == RESOLVED["ts"]


def test_slack_and_webhook(key_env, monkeypatch) -> None:
    slack, hook = FakeSlack(), FakeWebhook()
    monkeypatch.setenv("SLACK_URL", slack.url + "/services/T0/B0/xyz")
    d = dispatcher(SinkConfig(name="slack", type="slack", secret=Secret(env="SLACK_URL")),
                   SinkConfig(name="hook", type="webhook", url=hook.url + "/alerts", secret=key_env))
    d.submit(FIRING)
    wait(lambda: slack.requests and hook.requests)
    d.stop()
    assert "FIRING" in slack.requests[0][2]["text"] and "runbook" in slack.requests[0][2]["text"]
    path, headers, body = hook.requests[0]
    assert body["fingerprint"] == FIRING["fingerprint"] and body["state"] == "firing"
    assert headers["Authorization"] == f"Bearer {KEY}"


def test_retries_5xx_and_429_then_delivers(key_env) -> None:
    pd = FakePagerDuty()
    pd.fail_next = [500, 503, 429]
    d = dispatcher(SinkConfig(name="pd", type="pagerduty", url=pd.url + "/v2/enqueue", secret=key_env))
    d.submit(FIRING)
    wait(lambda: pd.incidents.get(FIRING["fingerprint"]) == "triggered")
    d.stop()
    assert d.stats[("pd", "retried")] == 3 and d.stats[("pd", "delivered")] == 1


def test_other_4xx_is_not_retried_and_the_secret_never_reaches_the_log(key_env, monkeypatch, caplog) -> None:
    pd = FakePagerDuty()
    monkeypatch.setenv("TEST_KEY", "wrong-key-zzz")
    caplog.set_level(logging.ERROR, logger="lastmile.delivery")
    d = dispatcher(SinkConfig(name="pd", type="pagerduty", url=pd.url + "/v2/enqueue", secret=Secret(env="TEST_KEY")))
    pd.handle = lambda path, headers, body: (400, {"status": "invalid event", "echo": body}, {})  # echoes the key back
    d.submit(FIRING)
    wait(lambda: d.stats[("pd", "rejected")] == 1)
    time.sleep(0.2)
    d.stop()
    assert len(pd.requests) == 1  # not retried
    assert "rejected an alert with 400" in caplog.text and "wrong-key-zzz" not in caplog.text
    assert "wrong-key-zzz" not in json.dumps(d.state())


def test_a_dead_sink_never_blocks_and_recovers(key_env) -> None:
    pd = FakePagerDuty()
    url = pd.url
    pd.httpd.shutdown()
    pd.httpd.server_close()  # nothing listens: connection refused
    d = dispatcher(SinkConfig(name="pd", type="pagerduty", url=url + "/v2/enqueue", secret=key_env),
                   cfg=DeliveryConfig(backoff_initial_seconds=0.05, backoff_max_seconds=0.2, max_attempts=1000))
    started = time.monotonic()
    for i in range(200):
        d.submit(alert("firing", f"2026-11-24T12:{i // 60:02d}:{i % 60:02d}+00:00", kind="disparity"))
    assert time.monotonic() - started < 1.0  # submitting never waits for the sink
    wait(lambda: d.stats[("pd", "retried")] > 0)
    # the sink comes back on the same port
    back = ThreadingHTTPServer(("127.0.0.1", int(url.rsplit(":", 1)[1])), pd.httpd.RequestHandlerClass)
    threading.Thread(target=back.serve_forever, daemon=True).start()
    wait(lambda: d.stats[("pd", "delivered")] >= 1, timeout=15)
    d.stop()
    back.shutdown()


def test_outbox_survives_a_restart_and_redone_transitions_are_not_sent_twice(key_env) -> None:
    hook = FakeWebhook()
    sink = SinkConfig(name="hook", type="webhook", url=hook.url)
    first = Dispatcher([build_sink(sink)], FAST, AlertingLinks())  # not started: the crash came first
    first.submit(FIRING)
    saved = json.loads(json.dumps(first.state()))  # as the checkpoint stores it
    second = Dispatcher([build_sink(sink)], FAST, AlertingLinks()).start()
    second.restore(saved)
    wait(lambda: len(hook.requests) == 1)
    second.submit(FIRING)  # the restart redoes the work after the checkpoint: the same transition again
    time.sleep(0.3)
    second.stop()
    assert len(hook.requests) == 1 and hook.requests[0][2]["fingerprint"] == FIRING["fingerprint"]


def test_routing_by_severity_and_kind(key_env) -> None:
    hook = FakeWebhook()
    d = dispatcher(SinkConfig(name="only-disparity", type="webhook", url=hook.url, kinds=["disparity"]))
    d.submit(FIRING)
    d.submit(alert("firing", "2026-11-24T12:05:00+00:00", kind="disparity"))
    wait(lambda: len(hook.requests) == 1)
    time.sleep(0.2)
    d.stop()
    assert [b["kind"] for _, _, b in hook.requests] == ["disparity"]


def test_an_explained_alert_pages_no_one_and_is_grouped_under_its_cause(key_env) -> None:
    """One cause, one page: pagers skip an alert explained by a firing one; Alertmanager groups it."""
    from monitor.sinks import enrich

    cause = FIRING
    explained = {**alert("firing", "2026-11-24T12:01:00+00:00"), "slice": {"tenant": "st-marys", "noise": "ward-b"},
                 "explained_by": {"noise": "ward-b"}, "incident": cause["fingerprint"]}
    links = AlertingLinks()
    for kind in ("pagerduty", "opsgenie", "slack"):
        sink = build_sink(SinkConfig(name=kind, type=kind, secret=key_env))
        assert sink.wants(enrich(cause, links)) and not sink.wants(enrich(explained, links)), kind
    hook = build_sink(SinkConfig(name="hook", type="webhook", url="http://127.0.0.1:1/x"))
    assert hook.wants(enrich(explained, links))
    am = build_sink(SinkConfig(name="am", type="alertmanager", url="http://127.0.0.1:1"))
    assert am.wants(enrich(explained, links))
    labels = [am.request(enrich(r, links)).body[0]["labels"] for r in (cause, explained)]
    assert labels[0]["incident"] == labels[1]["incident"] == cause["fingerprint"]


def test_sink_config_errors_name_the_sink() -> None:
    from monitor.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config({"sinks": [{"name": "pd", "type": "pagerduty"}, {"name": "pd", "type": "webhook"}]})
    problems = dict(info.value.problems)
    assert "sinks[0].secret" in problems and "sinks[1].url" in problems and "sinks[1].name" in problems
    with pytest.raises(ConfigError) as info:
        parse_config({"sinks": [{"name": "chat", "type": "slack"}]})
    assert "sinks[0].secret" in dict(info.value.problems)


def test_alertmanager_sink_against_the_real_alertmanager(tmp_path) -> None:
    import subprocess
    import urllib.request

    from tests.kafka_harness import free_port
    from tests.test_deploy import tool

    binary = tool("prometheus-alertmanager")
    port = free_port()
    (tmp_path / "am.yml").write_text("route: {receiver: none}\nreceivers: [{name: none}]\n")
    am = subprocess.Popen([binary, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path}",
                           f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def active() -> list[dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/alerts?active=true", timeout=2) as resp:
                return json.loads(resp.read())
        except OSError:
            return []

    try:
        wait(lambda: active() == [], timeout=20)
        d = dispatcher(SinkConfig(name="am", type="alertmanager", url=f"http://127.0.0.1:{port}"))
        now = datetime.now().astimezone()
        firing = alert("firing", now.isoformat())
        d.submit(firing)
        wait(lambda: len(active()) == 1)
        (got,) = active()
        assert got["labels"]["alertname"] == "LastmileSliceDrift" and got["labels"]["tenant"] == "st-marys"
        assert got["annotations"]["summary"] == firing["summary"] and got["status"]["state"] == "active"
        d.submit(alert("resolved", now.isoformat()))
        wait(lambda: active() == [])
        d.stop()
        assert d.stats[("am", "rejected")] == 0
    finally:
        am.terminate()
        am.wait(timeout=10)
