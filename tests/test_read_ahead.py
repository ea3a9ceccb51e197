"""The consumer that reads ahead in a second process (``kafka.read_ahead``) against a real broker:
whatever the daemon seeks, pauses and resumes, it is handed each partition's records in order,
from the positions it asked for, never one it did not ask for. The same holds for the consumer
in this process, :class:`monitor.consumer.Consumer` (with kafka-python's own, a resumed
partition can stall for good: kafka-python 3.0's parking of a paused partition's records)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import IllegalStateError, KafkaError

from monitor.consumer import Consumer, ReadAheadConsumer, _marks
from tests.kafka_harness import free_port

pytestmark = pytest.mark.slow


def _fill(bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for p in range(partitions):
        for i in range(per_partition):
            producer.send(topic, value=f"{p}:{i}".encode(), key=str(i).encode(), partition=p)
    producer.flush()
    producer.close()


def _consumer(bootstrap: str, group: str, kind: type = ReadAheadConsumer):
    return kind(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest",
                max_poll_records=37, session_timeout_ms=6000, heartbeat_interval_ms=2000)


@pytest.mark.parametrize("kind, seed", [(ReadAheadConsumer, 5), (ReadAheadConsumer, 6), (Consumer, 5), (Consumer, 6)])
def test_seeks_pauses_and_resumes_give_each_partition_in_order_from_where_asked(broker, kind, seed) -> None:
    (topic,) = broker.create_topics(3, "read-ahead")
    per_partition = 600
    _fill(broker.bootstrap, topic, 3, per_partition)
    consumer = _consumer(broker.bootstrap, f"g-{topic}", kind)
    rng = random.Random(seed)
    asked: list[str] = []  # what the daemon's side asked the child
    if kind is ReadAheadConsumer:
        ask = consumer._call
        consumer._call = lambda name, *args, **kwargs: asked.append(name) or ask(name, *args, **kwargs)
    try:
        consumer.subscribe([topic])
        expected: dict[TopicPartition, int] = {}  # the next offset each partition must deliver
        paused: set[TopicPartition] = set()
        seen: set[tuple[int, int]] = set()
        deadline = time.monotonic() + 60
        while len(seen) < 3 * per_partition and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500, max_records=37)
            assert len(batch) == 0 or sum(map(len, batch.values())) <= 37
            for tp, records in batch.items():
                assert tp not in paused, f"records of paused {tp}"
                for rec in records:
                    assert (rec.topic, rec.partition) == (tp.topic, tp.partition)
                    assert rec.value == f"{rec.partition}:{rec.offset}".encode()
                    assert rec.key == str(rec.offset).encode()
                    want = expected.get(tp, 0)
                    assert rec.offset == want, f"{tp}: offset {rec.offset}, expected {want}"
                    expected[tp] = rec.offset + 1
                    seen.add((rec.partition, rec.offset))
            assigned = consumer.assignment()
            if not assigned:
                continue
            # between polls, as the daemon does: seek (back, so every record is seen in the end), pause, resume
            action = rng.random() if len(seen) < 2 * per_partition else 1.0
            tp = rng.choice(sorted(assigned))
            if action < 0.15:
                target = rng.randrange(0, expected.get(tp, 0) + 1)
                consumer.seek(tp, target)
                expected[tp] = target
            elif action < 0.30 and tp not in paused:
                consumer.pause(tp)
                paused.add(tp)
            elif action < 0.50 and paused:
                back = paused.pop()
                consumer.resume(back)
            if action == 1.0 and paused:  # let everything finish
                consumer.resume(*paused)
                paused.clear()
        assert len(seen) == 3 * per_partition, sorted((tp.partition, n) for tp, n in expected.items())
        for tp in assigned:  # (as of the last fetch response)
            assert 0 < consumer.highwater(tp) <= per_partition
        if kind is ReadAheadConsumer:  # answered from the last poll's reply, as the child answers now
            assert "assignment" not in asked and "highwater" not in asked and "poll" in asked
            assert consumer.assignment() == ask("assignment") == assigned
            assert {tp: consumer.highwater(tp) for tp in assigned} == {tp: ask("highwater", tp) for tp in assigned}
        plain = KafkaConsumer(bootstrap_servers=broker.bootstrap)  # the broker's answer, asked in this process
        try:
            assert consumer.end_offsets(sorted(assigned), timeout_ms=5000) == plain.end_offsets(sorted(assigned))
        finally:
            plain.close()
        from kafka.structs import OffsetAndMetadata

        consumer.commit({tp: OffsetAndMetadata(123, "", -1) for tp in assigned}, timeout_ms=5000)
        assert {consumer.committed(tp) for tp in assigned} == {123}
    finally:
        consumer.close(autocommit=False)
    if kind is ReadAheadConsumer:
        assert consumer._process.poll() is not None


def test_an_unreachable_broker_raises_kafkas_error_from_the_constructor() -> None:
    t0 = time.monotonic()
    with pytest.raises(KafkaError):
        ReadAheadConsumer(bootstrap_servers=f"127.0.0.1:{free_port()}", bootstrap_timeout_ms=1000)
    assert time.monotonic() - t0 < 30


_KILLED_PARENT = r"""
import sys, time
from monitor.consumer import ReadAheadConsumer
c = ReadAheadConsumer(bootstrap_servers=sys.argv[1], group_id="orphan", auto_offset_reset="earliest")
c.subscribe(["orphan-topic"])
c.poll(timeout_ms=100)
print(c._process.pid, flush=True)
time.sleep(600)
"""


def test_the_consumer_process_ends_when_the_daemon_is_killed(broker) -> None:
    broker.create_topics(1, "orphan-topic")
    parent = subprocess.Popen([sys.executable, "-c", _KILLED_PARENT, broker.bootstrap], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as fh:
                if fh.read().split(") ")[1].startswith("Z"):  # a zombie: it has exited
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the consumer process outlived the daemon by 15 s")


def test_a_partition_revoked_while_the_marks_are_read_is_left_out() -> None:
    """The child reads the assignment, then each partition's high watermark, while a rebalance may
    run on kafka-python's IO thread: a partition revoked in between is left out of the reply (the
    change itself comes with the next poll), instead of failing the daemon's poll."""
    kept, gone = TopicPartition("t", 0), TopicPartition("t", 1)

    class Revoking:
        def assignment(self) -> set:
            return {kept, gone}

        def highwater(self, tp: TopicPartition) -> int:
            if tp == gone:
                raise IllegalStateError("Partition is not assigned")
            return 42

    assert _marks(Revoking()) == [("t", 0, 42)]
