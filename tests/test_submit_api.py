"""POST /v1/submissions through a real HTTP client: authentication, limits, validation, and that a
refused request changes nothing."""

from __future__ import annotations

import http.client
import json
from contextlib import contextmanager

import pytest

from monitor.auth import RateLimiter, TokenStore
from monitor.exposition import SliceCollector
from monitor.server import Health, Intake, Server

TOKEN_X, TOKEN_Y = "x-token-0123456789abcdef", "y-token-fedcba9876543210"
TOKENS = f"submitters:\n  - {{name: org-x, token: {TOKEN_X}, models: [asr-en]}}\n  - {{name: org-y, token: {TOKEN_Y}}}\n"
GOOD = {"id": "sub-1", "model": "asr-en", "group": "accent in {scottish, nigerian-english} and noise = ward-b",
        "claim": {"kind": "disparity", "metric": "wer", "min_gap": 0.05}, "budget": {"max_outcomes": 5000}}


@contextmanager
def serving(burst: int = 5, **limits):
    """A server whose intake appends to a list, on a clock the test moves: (server, appended, now, collector)."""
    appended: list[bytes] = []
    now = [1795514400.0]
    collector = SliceCollector()
    collector.publish({"slices": [], "alerts": [], "submissions": [], "pipeline": {}})
    intake = Intake(TokenStore.parse(TOKENS), RateLimiter(per_minute=60, burst=burst, clock=lambda: now[0]),
                    appended.append, ("tenant", "accent", "device", "noise"), ("wer",), clock=lambda: now[0], **limits)
    server = Server(collector, Health(), "127.0.0.1", 0, intake=intake).start()
    try:
        yield server, appended, now, collector
    finally:
        server.close()


@pytest.fixture
def api():
    with serving(max_body=4096, max_active=3) as running:
        yield running


def post(server: Server, body: bytes | str | dict, token: str | None = TOKEN_X,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    conn.request("POST", "/v1/submissions", body=data, headers=h)
    resp = conn.getresponse()
    out = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, out, dict(resp.getheaders())


def test_an_authenticated_valid_submission_is_appended_once_with_the_servers_time(api) -> None:
    server, appended, now, _ = api
    status, body, _ = post(server, {**GOOD, "ts": "2020-01-01T00:00:00Z"})  # a body cannot backdate its test
    assert status == 202 and body["location"] == "/v1/submissions/sub-1" and len(body["hypothesis"]) == 16
    (event,) = [json.loads(a) for a in appended]
    assert event["type"] == "submission" and event["ts"] == now[0] and event["submitter"] == "org-x"
    assert event["group"] == {"all": [{"dim": "accent", "in": ["nigerian-english", "scottish"]},
                                      {"dim": "noise", "eq": "ward-b"}]}


@pytest.mark.parametrize("token, status", [(None, 401), ("wrong-token-0123456789", 401), (TOKEN_X + " ", 202)])
def test_tokens(api, token, status) -> None:
    server, appended, _, _ = api
    got, body, headers = post(server, GOOD, token=token)
    assert got == status, body
    if status == 401:
        assert headers.get("WWW-Authenticate", "").startswith("Bearer") and not appended
        assert TOKEN_X not in json.dumps(body)


def test_a_token_for_another_model_is_forbidden(api) -> None:
    server, appended, _, _ = api
    status, body, _ = post(server, {**GOOD, "model": "other-model"})
    assert status == 403 and body["path"] == "$.model" and not appended
    assert post(server, {**GOOD, "model": "other-model"}, token=TOKEN_Y)[0] == 202  # org-y may submit for any


@pytest.mark.parametrize("body, path", [
    (b"{not json", "$"),
    (b"[1, 2]", "$"),
    ({**GOOD, "group": {"all": [{"dim": "colour", "eq": "red"}]}}, "$.group.all[0]"),
    ({**GOOD, "group": "accent in {a, b"}, "$.group"),
    ({**GOOD, "claim": {"kind": "drift", "min_gap": "lots"}}, "$.claim.min_gap"),
    ({**GOOD, "submitter": "org-y"}, "$.submitter"),
    ({**GOOD, "group": {"all": [{"dim": "accent", "in": [f"v{i}" for i in range(65)]}]}}, "$.group.all[0].in"),
    ({**GOOD, "group": {"any": [{"dim": "noise", "eq": str(i)} for i in range(40)]}}, "$.group.any"),
    ({**GOOD, "id": "%s%n{0.__class__}"}, None),  # printable: accepted as an id, never formatted
])
def test_every_rejected_body_gets_a_400_with_its_json_path(api, body, path) -> None:
    server, appended, _, _ = api
    status, out, _ = post(server, body)
    if path is None:
        assert status == 202
        return
    assert status == 400 and out["path"].startswith(path), out
    assert not appended


def test_hostile_groups_are_data(api) -> None:
    server, appended, _, _ = api
    deep: dict = {"dim": "noise", "eq": "x"}
    for _ in range(200):
        deep = {"not": deep}
    for group in (deep, "(" * 1500 + "noise = x" + ")" * 1500, "noise = \"__import__('os').system('x')\"",
                  "noise = \"(a+)+$\"", "noise = \"" + "\u2603" * 300 + "\""):
        status, out, _ = post(server, {**GOOD, "id": f"h{len(appended)}", "group": group})
        assert status in (400, 202), out
        if status == 400:
            assert out["path"].startswith("$.group")
    bodies = [json.loads(a)["group"] for a in appended]
    assert {"dim": "noise", "eq": "__import__('os').system('x')"} in bodies and {"dim": "noise", "eq": "(a+)+$"} in bodies


def test_size_and_rate_limits(api) -> None:
    server, appended, now, collector = api
    status, out, _ = post(server, {**GOOD, "group": "noise = " + "x" * 5000})
    assert status == 413 and not appended
    # at most 3 pending per submitter, counted at once (before the loop has processed them)
    results = [post(server, {**GOOD, "id": f"r{i}"}) for i in range(4)]
    assert [r[0] for r in results] == [202, 202, 202, 429] and "pending" in results[3][1]["error"]
    # once they have verdicts, there is room again; then the rate limit (a burst of 5) applies
    collector.publish({"slices": [], "alerts": [], "pipeline": {},
                       "submissions": [{"status": "refuted", "submitters": ["org-x"], "submissions": [f"r{i}"]}
                                       for i in range(3)]})
    assert post(server, {**GOOD, "id": "r9"})[0] == 202
    status, out, headers = post(server, {**GOOD, "id": "late"})
    assert status == 429 and "slow down" in out["error"] and int(headers["Retry-After"]) >= 1
    assert len(appended) == 4
    now[0] += 60  # refilled
    assert post(server, {**GOOD, "id": "later"})[0] == 202 and len(appended) == 5


def test_reading_verdicts(api) -> None:
    server, _, _, collector = api
    collector.publish({"slices": [], "alerts": [], "pipeline": {},
                       "submissions": [{"status": "confirmed", "submitters": ["org-x"], "submissions": ["a", "b"]}]})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for path, status in (("/v1/submissions", 200), ("/v1/submissions/b", 200), ("/v1/submissions/zz", 404)):
        conn.request("GET", path)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == status, (path, body)
    assert body["error"].startswith("no such submission")


def test_ids_belong_to_their_submitter_and_a_decided_hypothesis_earns_no_credit(api) -> None:
    server, appended, _, collector = api
    status, first, _ = post(server, {**GOOD, "id": "c1"})
    assert status == 202
    # another submitter cannot take the id (or shadow the verdict others read under it)
    status, out, _ = post(server, {**GOOD, "id": "c1"}, token=TOKEN_Y)
    assert status == 409 and out["path"] == "$.id" and len(appended) == 1
    # the same submission again is not a second one; the same id for another claim is refused
    status, out, _ = post(server, {**GOOD, "id": "c1"})
    assert status == 200 and out["status"] == "received already" and len(appended) == 1
    status, out, _ = post(server, {**GOOD, "id": "c1", "claim": {**GOOD["claim"], "min_gap": 0.1}})
    assert status == 409 and out["path"] == "$.id" and len(appended) == 1
    # once decided, copying the group from the public verdicts earns nothing: 409 with the verdict
    verdict = {"hypothesis": first["hypothesis"], "status": "confirmed", "submitters": ["org-x"],
               "submissions": ["c1"], "joined": [{"submitter": "org-x", "id": "c1"}], "credited": "org-x"}
    collector.publish({"slices": [], "alerts": [], "pipeline": {}, "submissions": [verdict]})
    status, out, _ = post(server, {**GOOD, "id": "copy"}, token=TOKEN_Y)
    assert status == 409 and out["verdict"]["credited"] == "org-x" and len(appended) == 1
    status, out, _ = post(server, {**GOOD, "id": "c1"}, token=TOKEN_Y)  # still taken, now from the snapshot
    assert status == 409 and out["path"] == "$.id" and not server.intake.claimed


def test_the_tests_running_at_once_are_capped_over_all_submitters() -> None:
    with serving(max_active=3, max_pending=2) as (server, appended, _, _):
        assert post(server, {**GOOD, "id": "x1"})[0] == 202
        assert post(server, {**GOOD, "id": "y1"}, token=TOKEN_Y)[0] == 202
        status, out, headers = post(server, {**GOOD, "id": "y2"}, token=TOKEN_Y)
        assert status == 429 and "being tested" in out["error"] and headers["Retry-After"] == "600"
        assert len(appended) == 2


def test_decided_submissions_free_the_cap_for_everyone() -> None:
    with serving(burst=9, max_active=3, max_pending=3) as (server, _, _, collector):
        assert [post(server, {**GOOD, "id": f"y{i}"}, token=TOKEN_Y)[0] for i in range(3)] == [202] * 3
        assert post(server, {**GOOD, "id": "x0"})[0] == 429  # three under test
        collector.publish({"slices": [], "alerts": [], "pipeline": {}, "submissions": [
            {"status": "refuted", "submitters": ["org-y"], "submissions": [f"y{i}"]} for i in range(3)]})
        assert post(server, {**GOOD, "id": "x0"})[0] == 202  # decided: room again, for anyone


def test_a_test_starts_start_delay_after_the_server_accepted_it() -> None:
    with serving(start_delay=10.0) as (server, appended, now, _):
        assert post(server, {**GOOD, "ts": "2020-01-01T00:00:00Z"})[0] == 202
        (event,) = [json.loads(a) for a in appended]
        assert event["ts"] == now[0] + 10.0
