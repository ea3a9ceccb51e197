from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from monitor.exposition import SliceCollector
from monitor.server import Health, Server


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def app():
    collector, health = SliceCollector(), Health(liveness_timeout=0.5)
    server = Server(collector, health, "127.0.0.1", 0).start()
    yield server
    server.close()


def test_endpoints(app) -> None:
    port = app.port
    assert get(port, "/v1/slices")[0] == 503  # nothing published yet
    status, body = get(port, "/readyz")
    assert status == 503 and "partitions assigned" in json.loads(body)["missing"]
    app.health.assigned = app.health.restored = app.health.broker_ok = True
    assert get(port, "/readyz")[0] == 200
    table = {"slices": [], "alerts": [{"fingerprint": "f1"}],
             "pipeline": {"events": {"prediction": 3}, "invalid": {"bad_json": 1}, "outcomes": 1,
                          "join": {"pending": 2, "expired_unlabelled": 0, "expired_orphan_feedback": 0, "evicted": 0,
                                   "duplicates": {}},
                          "slices": {"tracked": 1, "value_overflow": {}, "values_retired": {}, "slice_overflow": 0,
                                     "slices_retired": 0}}}
    app.collector.publish(table)
    assert json.loads(get(port, "/v1/alerts")[1]) == {"alerts": [{"fingerprint": "f1"}]}
    assert json.loads(get(port, "/v1/slices")[1])["pipeline"]["outcomes"] == 1
    status, body = get(port, "/metrics")
    assert status == 200 and b'lastmile_invalid_events_total{reason="bad_json"} 1.0' in body
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/nope")[0] == 404
    assert get(port, "/v1/slices", method="POST")[0] == 405


def test_liveness_fails_when_the_loop_stalls(app) -> None:
    import time

    time.sleep(0.6)
    status, body = get(app.port, "/healthz")
    assert status == 503 and json.loads(body)["status"] == "stalled"
    app.health.beat()
    assert get(app.port, "/healthz")[0] == 200


def test_series_budget_keeps_alerting_and_busiest_slices() -> None:
    from prometheus_client import CollectorRegistry

    from monitor.exposition import SERIES_PER_ROW

    rows = [{"model": "m", "metric": "wer", "slice": {"a": str(i)}, "n": i, "errors": 1.0, "units": 2.0,
             "window": {"value": 0.5, "lower": 0.4, "upper": 0.6}, "baseline": 0.5,
             "status": "alerting" if i == 3 else "ok", "firing": ["drift"] if i == 3 else []} for i in range(100)]
    table = {"slices": rows, "alerts": [], "pipeline": {
        "events": {}, "invalid": {}, "outcomes": 0,
        "join": {"pending": 0, "expired_unlabelled": 0, "expired_orphan_feedback": 0, "evicted": 0, "duplicates": {}},
        "slices": {"tracked": 100, "value_overflow": {}, "values_retired": {}, "slice_overflow": 0, "slices_retired": 0}}}
    collector = SliceCollector(series_budget=10 * SERIES_PER_ROW)
    collector.publish(table)
    registry = CollectorRegistry()
    registry.register(collector)
    exported = {s.labels["a"] for m in registry.collect() if m.name == "lastmile_slice_outcomes" for s in m.samples}
    assert exported == {"3"} | {str(i) for i in range(91, 100)}
    assert registry.get_sample_value("lastmile_slice_series_dropped") == 90 * SERIES_PER_ROW
