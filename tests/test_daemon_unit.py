"""Daemon logic without a broker: backpressure decisions and start-up failures."""

from __future__ import annotations

from collections import namedtuple

from monitor.consumer import AssignmentChanges
from monitor.daemon import Daemon
from tests.conftest import make_config

TP = namedtuple("TP", "topic partition")


class FakeConsumer:
    def __init__(self) -> None:
        self.paused: set = set()

    def pause(self, *tps) -> None:
        self.paused |= set(tps)

    def resume(self, *tps) -> None:
        self.paused -= set(tps)


def test_partitions_far_ahead_in_event_time_are_paused_until_the_slowest_catches_up(tmp_path) -> None:
    cfg = make_config(kafka={"max_event_time_skew": "1h"}, checkpoint={"directory": str(tmp_path)})
    d = Daemon(cfg)
    d.consumer = FakeConsumer()
    slow, fast, idle = TP("predictions", 0), TP("feedback", 0), TP("feedback", 1)
    d.last_ts = {slow: 1000.0, fast: 1000.0 + 7200, idle: 1000.0 + 9999}
    d.lag = {slow: 500, fast: 800, idle: 0}  # idle has nothing left to read: it never holds anyone back
    d._align()
    assert d.consumer.paused == {fast}
    d.last_ts[slow] = 1000.0 + 5000  # the slow one caught up to within the skew
    d._align()
    assert d.consumer.paused == set()
    d.lag[slow] = 0  # nothing left behind: nobody is paused
    d.last_ts[fast] = 1e9
    d._align()
    assert d.consumer.paused == set()


def test_a_damaged_checkpoint_stops_the_daemon_before_it_touches_kafka(tmp_path, caplog) -> None:
    (tmp_path / "ckpt-000000000001.lmc").write_bytes(b"garbage")
    cfg = make_config(checkpoint={"directory": str(tmp_path)})

    def no_kafka(**_kwargs):
        raise AssertionError("must not connect")

    assert Daemon(cfg, consumer_factory=no_kafka).run(server=False) == 2
    assert "ckpt-000000000001.lmc is not a lastmile checkpoint" in caplog.text and "aside" in caplog.text


def test_unreachable_kafka_at_start_keeps_the_daemon_live_not_ready_and_stoppable(tmp_path) -> None:
    import threading
    import time

    from kafka.errors import KafkaTimeoutError

    attempts = []

    def no_broker(**_kwargs):
        attempts.append(time.monotonic())
        raise KafkaTimeoutError("Bootstrap timed out")

    cfg = make_config(checkpoint={"directory": str(tmp_path)})
    d = Daemon(cfg, consumer_factory=no_broker)
    threading.Timer(2.5, d.request_stop).start()  # SIGTERM while it is still waiting
    started = time.monotonic()
    assert d.run(server=False) == 0
    assert time.monotonic() - started < 5
    assert len(attempts) >= 2  # it retried
    assert d.health.live()[0] and not d.health.ready()[0]


def test_only_a_daemon_that_owns_the_process_freezes_the_collector_and_it_frees_the_engine_it_replaces(
        tmp_path) -> None:
    import gc
    import weakref

    cfg = make_config(checkpoint={"directory": str(tmp_path)})
    Daemon(cfg)._restore()
    assert gc.get_freeze_count() == 0  # embedded (tests, the bench's callers): left alone
    d = Daemon(cfg, freeze_gc=True)  # as `lastmile run`
    try:
        d._restore()
        assert gc.get_freeze_count() > 0
        replaced = weakref.ref(d.engine)
        d._dirty = True  # (processed something since: the next assignment restores afresh)
        d._restore()
        assert replaced() is None  # not kept by the freeze, reference cycles and all
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


class CaughtUpConsumer(FakeConsumer):
    """Nothing left to read on the partitions not paused: every poll comes back empty."""

    def __init__(self, ends: dict) -> None:
        super().__init__()
        self.ends, self.asked = ends, 0

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        return {}

    def end_offsets(self, tps, timeout_ms=None) -> dict:
        self.asked += 1
        return {tp: self.ends[tp] for tp in tps}


def test_paused_partitions_resume_as_soon_as_a_poll_finds_nothing_else_to_read(tmp_path) -> None:
    """Realigning waits for the periodic lag refresh, except when a poll comes back empty while
    partitions are paused: the ones still read may have caught up, and the paused ones would sit
    with data until the next refresh (seconds of nothing read at the end of a backlog)."""
    now = [100.0]
    cfg = make_config(kafka={"max_event_time_skew": "1h"}, checkpoint={"directory": str(tmp_path)})
    d = Daemon(cfg, clock=lambda: now[0])
    slow, fast = TP("predictions", 0), TP("feedback", 0)
    d.consumer, d.listener = CaughtUpConsumer({slow: 500, fast: 1000}), AssignmentChanges()
    d.last_ts = {slow: 1000.0, fast: 1000.0 + 7200}
    d.positions = {slow: 400, fast: 200}
    d._refresh_lag()
    d._align()
    d._last_lag = now[0]
    assert d.consumer.paused == {fast} and d.consumer.asked == 1
    d.positions[slow] = 500  # the slow one was read to its end
    now[0] += 0.5  # long before the next periodic refresh
    d.step()
    assert d.consumer.paused == set() and d.lag == {slow: 0, fast: 800}
    d.step()  # nothing paused: an empty poll asks the broker nothing more
    assert d.consumer.asked == 2
    d.consumer.paused = d.paused = {fast}
    d.health.broker_ok = False  # the broker did not answer last time: left to the periodic refresh
    d.step()
    assert d.consumer.asked == 2 and d.consumer.paused == {fast}
    now[0] += 5.0
    d.step()
    assert d.consumer.asked == 3 and d.consumer.paused == set()
