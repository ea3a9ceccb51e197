"""``lastmile run`` against a real Kafka-compatible broker, compared with ``lastmile replay``."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import pytest

from monitor.config import load_config
from monitor.engine import Engine
from monitor.events import parse_ts
from monitor.replay import replay
from monitor.simulate import SpeechScenario
from monitor.table import slice_table
from tests.conftest import ROOT
from tests.kafka_harness import Broker, free_port, produce
from tests.poison import poison
from tests.receivers import PostCollector

pytestmark = pytest.mark.slow


class DaemonProcess:
    def __init__(self, broker: Broker, topics: dict[str, str], state_dir: Path, group: str):
        self.port = free_port()
        self.env = {**os.environ,
                    "LASTMILE__KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
                    "LASTMILE__KAFKA__GROUP_ID": group,
                    "LASTMILE__KAFKA__TOPICS__PREDICTIONS": topics["prediction"],
                    "LASTMILE__KAFKA__TOPICS__FEEDBACK": topics["feedback"],
                    "LASTMILE__KAFKA__MAX_POLL_INTERVAL": "10s",
                    "LASTMILE__KAFKA__SESSION_TIMEOUT": "6s",
                    "LASTMILE__CHECKPOINT__DIRECTORY": str(state_dir),
                    "LASTMILE__CHECKPOINT__INTERVAL": "1s",
                    "LASTMILE__HTTP__PORT": str(self.port)}
        self.proc: subprocess.Popen[str] | None = None
        self.log = state_dir.parent / f"daemon-{self.port}.log"

    def start(self) -> DaemonProcess:
        with open(self.log, "a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config",
                                          str(ROOT / "config" / "asr.yaml")],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        return self

    def get(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except OSError:
            return 0, {}

    def wait(self, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"daemon exited: {self.log.read_text()[-3000:]}"
            status, body = self.get("/v1/slices")
            if status == 200:
                last = body
                if predicate(body):
                    return body
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last pipeline: {last.get('pipeline')}; "
                             f"log: {self.log.read_text()[-3000:]}")

    def wait_ready(self, timeout: float, what: str) -> None:
        """Until /readyz answers 200 (partitions assigned, checkpoint restored, broker reachable)."""
        deadline = time.monotonic() + timeout
        while self.get("/readyz")[0] != 200:
            assert self.proc is not None and self.proc.poll() is None, f"daemon exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready {what}: {self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 40) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def expected_table(lines: list[bytes], tmp_path: Path) -> dict:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    engine = Engine(load_config(ROOT / "config" / "asr.yaml"))
    alerts = replay(engine, [path], progress=False)
    table = slice_table(engine)
    table["transitions"] = {f"{a.state.upper()} {a.kind} {a.summary}" for a in alerts}
    return table


def logged_transitions(log: Path) -> set[str]:
    """Alert transitions the daemon logged; work redone after a restart logs identical lines."""
    return {m.group(1) for m in re.finditer(r"lastmile: ((?:FIRING|RESOLVED) \w+ .+)$", log.read_text(), re.M)}


def numbers(table: dict) -> dict:
    return {(r["model"], json.dumps(r["slice"], sort_keys=True), r["metric"]): (r["n"], r["errors"], r["units"])
            for r in table["slices"]}


def setup_stream(broker: Broker, outcomes: int, seed: int, partitions: int = 4):
    preds, fbs = broker.create_topics(partitions, "predictions", "feedback")
    topics = {"prediction": preds, "feedback": fbs, "outcome": preds}
    lines = list(SpeechScenario(outcomes=outcomes, seed=seed).events())
    return topics, lines


def test_daemon_equals_replay_and_stops_cleanly_on_sigterm(broker, tmp_path) -> None:
    topics, lines = setup_stream(broker, 20_000, seed=21)
    produce(broker.bootstrap, topics, lines)
    expected = expected_table(lines, tmp_path)
    receiver = PostCollector()
    daemon = DaemonProcess(broker, topics, tmp_path / "state", f"g-{tmp_path.name}")
    daemon.env["LASTMILE__SINKS"] = f"[{{name: hook, type: webhook, url: '{receiver.url}'}}]"
    daemon.start()
    body = daemon.wait(lambda b: b["pipeline"]["outcomes"] == expected["pipeline"]["outcomes"], 120, "all outcomes")
    assert numbers(body) == numbers(expected)
    assert body["pipeline"]["invalid"] == expected["pipeline"]["invalid"]
    assert {a["fingerprint"] for a in body["alerts"]} == {a["fingerprint"] for a in expected["alerts"]}
    assert logged_transitions(daemon.log) == expected["transitions"]
    assert daemon.get("/readyz")[0] == 200 and daemon.get("/healthz")[0] == 200
    # the webhook sink received every transition, each once, with its links
    deadline = time.monotonic() + 20
    while len(receiver.bodies) < len(expected["transitions"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    delivered = [f"{r['state'].upper()} {r['kind']} {r['summary']}" for r in receiver.bodies]
    assert sorted(delivered) == sorted(expected["transitions"])
    assert all(r["runbook_url"].endswith(".md") and r["severity"] == "page" for r in receiver.bodies)
    status, metrics_text = 0, ""
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=3) as resp:
        status, metrics_text = resp.status, resp.read().decode()
    assert status == 200 and "lastmile_slice_outcomes_total{" in metrics_text
    started = time.monotonic()
    assert daemon.terminate() == 0
    assert time.monotonic() - started < 30
    assert "stopping: checkpoint, commit, close" in daemon.log.read_text()


def test_kill_minus_9_at_random_points_loses_nothing_and_counts_nothing_twice(broker, tmp_path) -> None:
    topics, lines = setup_stream(broker, 110_000, seed=22)  # ≥ 200k events
    assert len(lines) >= 200_000
    expected = expected_table(lines, tmp_path)
    total = expected["pipeline"]["outcomes"]
    half = len(lines) // 2
    produce(broker.bootstrap, topics, lines[:half])  # the rest arrives while the daemon runs
    rng = random.Random(5)
    # two kills while only the first half is in the topics, three after the rest has arrived
    kill_at = sorted(rng.sample(range(total // 20, int(total * 0.4)), 2)) + sorted(
        rng.sample(range(int(total * 0.55), total - total // 20), 3))
    daemon = DaemonProcess(broker, topics, tmp_path / "state", f"g-{tmp_path.name}")
    produced_rest = False
    for i, target in enumerate(kill_at):
        daemon.start()
        if not produced_rest and i == 2:
            produce(broker.bootstrap, topics, lines[half:])
            produced_rest = True
        # partitions assigned first: a member killed while it joins the group (its checkpoint already
        # past the next target) left tansu's group never rebalancing again (3 runs in 5 on a fast day)
        daemon.wait_ready(60, f"before kill {i + 1}")
        daemon.wait(lambda b, t=target: b["pipeline"]["outcomes"] >= t, 180, f"{target} outcomes before kill {i + 1}")
        time.sleep(rng.random() * 0.5)  # anywhere: mid-batch, mid-checkpoint, mid-commit
        daemon.kill9()
    if not produced_rest:
        produce(broker.bootstrap, topics, lines[half:])
    daemon.start()
    body = daemon.wait(lambda b: b["pipeline"]["outcomes"] >= total and b["pipeline"]["join"]["pending"]
                       == expected["pipeline"]["join"]["pending"], 240, "every outcome after the restarts")
    time.sleep(2)  # nothing more may arrive: a double count would show up here
    _, body = daemon.get("/v1/slices")
    assert body["pipeline"]["outcomes"] == total
    assert numbers(body) == numbers(expected)
    assert body["pipeline"]["invalid"] == expected["pipeline"]["invalid"]
    assert {a["fingerprint"] for a in body["alerts"]} == {a["fingerprint"] for a in expected["alerts"]}
    assert daemon.terminate() == 0
    # every transition, with its value and n, as replay has it: outcomes met the detectors in the same order
    assert expected["transitions"] and logged_transitions(daemon.log) == expected["transitions"]


def test_broker_outage_not_ready_then_recovers_by_itself(broker, tmp_path) -> None:
    if broker.process is None:
        pytest.skip("outages are simulated by stopping the local broker")
    topics, lines = setup_stream(broker, 20_000, seed=23)
    expected = expected_table(lines, tmp_path)
    half = len(lines) // 2
    produce(broker.bootstrap, topics, lines[:half])
    daemon = DaemonProcess(broker, topics, tmp_path / "state", f"g-{tmp_path.name}").start()
    daemon.wait(lambda b: b["pipeline"]["outcomes"] > 1000, 120, "the first half")
    broker.stop()
    try:
        deadline = time.monotonic() + 30
        saw_not_ready = False
        while time.monotonic() < deadline:
            assert daemon.proc.poll() is None, "the daemon must stay up"
            if daemon.get("/readyz")[0] == 503:
                saw_not_ready = True
            assert daemon.get("/healthz")[0] == 200, "the loop keeps turning during the outage"
            time.sleep(1)
        assert saw_not_ready
    finally:
        broker.cont()
    produce(broker.bootstrap, topics, lines[half:])
    body = daemon.wait(lambda b: b["pipeline"]["outcomes"] == expected["pipeline"]["outcomes"], 180, "recovery")
    assert numbers(body) == numbers(expected)
    daemon.wait_ready(30, "after the outage")
    assert daemon.terminate() == 0


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 60) -> list:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    parts = consumer.partitions_for_topic(topic) or set()
    consumer.assign([TopicPartition(topic, p) for p in parts])
    out, deadline = [], time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        for messages in consumer.poll(timeout_ms=500).values():
            out.extend(messages)
    consumer.close()
    return out


def test_invalid_events_go_to_the_dead_letter_topic_with_their_reason(broker, tmp_path) -> None:
    topics, lines = setup_stream(broker, 5_000, seed=24)
    (dlq,) = broker.create_topics(1, "dead-letters")
    produce(broker.bootstrap, topics, lines)
    expected = expected_table(lines, tmp_path)
    invalid = sum(expected["pipeline"]["invalid"].values())
    assert invalid > 0
    daemon = DaemonProcess(broker, topics, tmp_path / "state", f"g-{tmp_path.name}")
    daemon.env["LASTMILE__KAFKA__DEAD_LETTER_TOPIC"] = dlq
    daemon.start()
    daemon.wait(lambda b: b["pipeline"]["outcomes"] == expected["pipeline"]["outcomes"], 120, "all outcomes")
    assert daemon.terminate() == 0
    letters = read_topic(broker.bootstrap, dlq, invalid)
    assert len(letters) == invalid
    reasons: dict[str, int] = {}
    for msg in letters:
        headers = dict(msg.headers)
        reasons[headers["lastmile-reason"].decode()] = reasons.get(headers["lastmile-reason"].decode(), 0) + 1
        source_topic, partition, offset = headers["lastmile-source"].decode().rsplit("/", 2)
        assert source_topic in (topics["prediction"], topics["feedback"]) and int(offset) >= 0
    assert reasons == expected["pipeline"]["invalid"]


def test_poisoned_events_cost_the_daemon_nothing_valid(broker, tmp_path) -> None:
    """Unscorable feedback for real ids ahead of the genuine one, copies of real events fifty years
    ahead of the wall clock, the malformed corpus: the daemon's slices equal the clean file's
    replay, nothing stalls, and each rejected event is dead-lettered with its reason."""
    preds, fbs = broker.create_topics(4, "predictions", "feedback")
    (dlq,) = broker.create_topics(1, "dead-letters")
    topics = {"prediction": preds, "feedback": fbs, "outcome": preds}
    clean = list(SpeechScenario(outcomes=10_000, seed=25, malformed=0.0).events())
    mixed, added = poison(clean, seed=26)
    produce(broker.bootstrap, topics, mixed)
    expected = expected_table(clean, tmp_path)
    daemon = DaemonProcess(broker, topics, tmp_path / "state", f"g-{tmp_path.name}")
    daemon.env["LASTMILE__KAFKA__DEAD_LETTER_TOPIC"] = dlq
    daemon.start()
    body = daemon.wait(lambda b: b["pipeline"]["outcomes"] == expected["pipeline"]["outcomes"], 120, "all outcomes")
    assert numbers(body) == numbers(expected)
    assert {a["fingerprint"] for a in body["alerts"]} == {a["fingerprint"] for a in expected["alerts"]}
    invalid = body["pipeline"]["invalid"]
    assert invalid["future_timestamp"] == added["future_timestamp"]
    assert invalid["unscorable"] >= added["unscorable"] and sum(invalid.values()) == sum(added.values())
    assert daemon.terminate() == 0
    letters = read_topic(broker.bootstrap, dlq, sum(added.values()))
    reasons = [dict(m.headers)["lastmile-reason"].decode() for m in letters]
    assert reasons.count("future_timestamp") == added["future_timestamp"]


def test_a_submission_through_the_api_gets_its_verdict_and_keeps_it_after_kill_9(broker, tmp_path) -> None:
    """An evaluator submits with `lastmile submit`; the daemon appends it to the submissions topic,
    tests it prospectively on the traffic that follows, confirms it, and a kill -9 and restart keep
    the verdict. Refused requests (no token, another model) append nothing."""
    from monitor.cli import main as cli

    preds, fbs = broker.create_topics(4, "predictions", "feedback")
    (subs,) = broker.create_topics(1, "submissions")
    topics = {"prediction": preds, "feedback": fbs, "outcome": preds}
    token = "org-x-token-0123456789abcdef"
    daemon = DaemonProcess(broker, topics, tmp_path / "state", f"g-{tmp_path.name}")
    daemon.env.update({"LASTMILE__KAFKA__TOPICS__SUBMISSIONS": subs, "LASTMILE__SUBMISSIONS__TOKENS": "{env: LM_TOKENS}",
                       "LM_TOKENS": f"submitters: [{{name: org-x, token: {token}, models: [asr-en]}}]",
                       "LM_TOKEN": token, "LASTMILE__SUBMISSIONS__BURST": "14"})
    daemon.start()
    daemon.wait_ready(60, "to take submissions")
    url = f"http://127.0.0.1:{daemon.port}"
    os.environ["LM_TOKEN"] = token
    try:
        assert cli(["submit", "--url", url, "--token-env", "LM_TOKEN", "--model", "other", "--group", "noise = ward-b",
                    "--min-gap", "0.03"]) == 1  # 403: not this token's model
        assert cli(["submit", "--url", url, "--token-env", "NO_SUCH_VAR", "--model", "asr-en", "--group", "noise = x",
                    "--min-gap", "0.03"]) == 2
        assert cli(["submit", "--url", url, "--token-env", "LM_TOKEN", "--model", "asr-en", "--id", "ward",
                    "--group", "noise = ward-b", "--min-gap", "0.03", "--deadline", "2d"]) == 0
    finally:
        del os.environ["LM_TOKEN"]
    def raw_post(body: bytes, auth: str | None = f"Bearer {token}") -> tuple[int, dict]:
        request = urllib.request.Request(f"{url}/v1/submissions", data=body,
                                         headers={"Authorization": auth} if auth else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode()
            assert token not in text
            return err.code, {**json.loads(text or "{}"), "retry_after": err.headers.get("Retry-After")}

    def sub(sid: str, group: object, **extra: object) -> bytes:
        return json.dumps({"id": sid, "model": "asr-en", "group": group,
                           "claim": {"kind": "disparity", "min_gap": 0.03}, **extra}).encode()

    pwned = tmp_path / "pwned"
    hostile = [  # (body, authorization, status, JSON path of the problem for a 400)
        (b"{}", None, 401, None), (b"{}", "Bearer wrong-token-0123456789", 401, None),
        (b"{}", f"Basic {token}", 401, None),
        (sub("other", "noise = x", model="other-model"), ..., 403, None),
        (b"x" * 20_000, ..., 413, None),
        (b'{"id": "deep", "model": "asr-en", "group": ' + b'{"not": ' * 50 + b'{"dim": "noise", "eq": "x"}'
         + b"}" * 50 + b', "claim": {"kind": "disparity", "min_gap": 0.03}}', ..., 400, "$.group"),
        (sub("wide", {"any": [{"dim": "noise", "eq": f"v{i}"} for i in range(40)]}), ..., 400, "$.group"),
        (sub("colour", "colour = red"), ..., 400, "$.group"),
        (sub("snowman", "noise = \"" + "\u2603" * 300 + "\""), ..., 400, "$.group"),
        (sub("as-y", "noise = x", submitter="org-y"), ..., 400, "$.submitter"),
        (b'{"id": "nul\\u0000", "model": "asr-en"}', ..., 400, "$.id"),
        # hostile strings are plain values, matched literally: accepted as data, never run
        (sub("fmt", 'noise = "%s%n{0.__class__.__mro__}"'), ..., 202, None),
        (sub("code", f"noise = \"__import__('os').system('touch {pwned}')\""), ..., 202, None),
        (sub("redos", 'noise = "(a+)+$"'), ..., 202, None),
    ]
    accepted = 1  # "ward"
    for body, auth, status, path in hostile:
        got, out = raw_post(body, f"Bearer {token}" if auth is ... else auth)
        assert got == status, (body[:80], got, out)
        if status == 400:
            assert out["path"].startswith(path), (body[:80], out)
        accepted += got == 202
    assert not pwned.exists()
    # the rate limit: a burst, then 429 with Retry-After, and nothing appended for it
    for i in range(12):
        got, out = raw_post(sub(f"burst-{i}", f"noise = burst-{i}"))
        if got == 429:
            break
        assert got == 202, out
        accepted += 1
    assert got == 429 and int(out["retry_after"]) >= 1
    assert token not in daemon.log.read_text()
    # traffic predicted after the submission (the server stamps it with its own clock)
    lines = list(SpeechScenario(outcomes=40_000, seed=27, malformed=0.0, start_ts=time.time() + 5).events())
    # each partition in event-time order (the daemon's watermark assumes it; replay sorts the file)
    lines.sort(key=lambda line: parse_ts(msgspec.json.decode(line)["ts"]))
    produce(broker.bootstrap, topics, lines)

    def verdict() -> dict:
        status, body = daemon.get("/v1/submissions/ward")
        return body if status == 200 else {}

    deadline = time.monotonic() + 180
    while verdict().get("status") != "confirmed" and time.monotonic() < deadline:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log.read_text()[-3000:]
        time.sleep(0.5)
    first = verdict()
    assert first.get("status") == "confirmed", (first, daemon.log.read_text()[-2000:])
    assert first["submitters"] == ["org-x"] and first["n"] >= 50 and first["e_value"] >= first["threshold"]
    _, table = daemon.get("/v1/slices")
    assert table["pipeline"]["events"].get("submission") == accepted  # refused requests appended nothing
    assert table["pipeline"]["invalid"].get("bad_submission", 0) == 0
    # the confirmed group is tracked as a slice of its own from then on
    pinned = daemon.wait(lambda b: any(r["slice"] == {"group": "noise = ward-b"} for r in b["slices"]), 120,
                         "the pinned slice")
    assert pinned["decision"]["threshold_log_arl_pinned"] > pinned["decision"]["threshold_log_arl"]
    time.sleep(2)  # a checkpoint (every 1s) covers the verdict
    daemon.kill9()
    daemon.start()
    deadline = time.monotonic() + 120
    while verdict().get("status") != "confirmed" and time.monotonic() < deadline:
        time.sleep(0.5)
    again = verdict()
    assert again["status"] == "confirmed" and again["decided"] == first["decided"] and again["n"] == first["n"]
    # a replay of the same events (the submissions topic included) reaches the same verdicts
    submitted = [m.value for m in read_topic(broker.bootstrap, subs, accepted)]
    assert len(submitted) == accepted
    path = tmp_path / "all.jsonl"
    path.write_bytes(b"\n".join(submitted + lines) + b"\n")
    engine = Engine(load_config(ROOT / "config" / "asr.yaml"))
    replay(engine, [path], progress=False)

    def verdicts(records: list[dict]) -> dict:
        return {r["hypothesis"]: (r["status"], r["n"], r["decided"], r["e_value"], r["joined"]) for r in records}

    final = daemon.wait(lambda b: b["pipeline"]["outcomes"] == engine.outcomes, 120, "every outcome")
    assert verdicts(final["submissions"]) == verdicts(slice_table(engine)["submissions"])
    assert daemon.terminate() == 0


def test_a_stream_of_nearly_only_invalid_events_stops_the_daemon_with_a_clear_error(broker, tmp_path) -> None:
    topics, _ = setup_stream(broker, 10, seed=25)
    produce(broker.bootstrap, topics, [b'{"not": "an event %d"}' % i for i in range(3000)])
    daemon = DaemonProcess(broker, topics, tmp_path / "state", f"g-{tmp_path.name}").start()
    assert daemon.proc.wait(timeout=120) == 3
    log = daemon.log.read_text()
    assert "were invalid" in log and "Check kafka.topics and events.fields" in log
