"""``lastmile run``: the engine on Kafka, with exactly-once state across restarts.

The loop, one thread (the consumer may read ahead in a second process), in order::

    poll ─▶ (assignment changed? restore the last checkpoint, seek to its offsets) ─▶ decode
         ─▶ engine ─▶ alerts ─▶ publish snapshot ─▶ every interval: checkpoint, then commit

* State and the offsets it covers are written together (:mod:`monitor.checkpoint`); offsets
  are committed to Kafka only after that file is durable. On start and on every assignment the
  last checkpoint is restored and each partition is sought to the offset the checkpoint covers
  (or, for a partition it does not cover, to the group's committed offset), so work done after
  the last checkpoint is simply redone: kill -9 at any moment loses nothing and counts nothing
  twice.
* With ``kafka.read_ahead`` (the default) poll() is answered by a consumer in a second process
  that fetched these records while the previous ones were processed (:mod:`monitor.consumer`);
  it gives back exactly what a consumer in this process would, seeks and pauses included.
* Rebalance callbacks run on kafka-python's IO thread while this thread waits inside poll():
  they only record that the assignment changed; the records of that poll are discarded and
  re-read after the seek.
* Backpressure is explicit: partitions whose event time runs more than
  ``kafka.max_event_time_skew`` ahead of the slowest partition that still has data are paused,
  and resumed when it catches up (this also keeps the join's pending set small). Work per loop
  turn is bounded by ``max_poll_records``, so ``max_poll_interval`` is never approached.
* Signals only set a flag: the loop finishes its batch, checkpoints, commits, closes and exits 0.
* Invalid events are counted by reason (and produced to the dead-letter topic with the reason in
  a header); if nearly every recent event is invalid the daemon stops with a clear error instead
  of dead-lettering a whole misconfigured stream (the invalid window is not committed, so the
  events are read again once the config is fixed).
"""

from __future__ import annotations

import gc
import logging
import math
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from functools import partial
from typing import Any

from monitor.alerts import Alert
from monitor.checkpoint import CheckpointError, CheckpointStore
from monitor.config import Config
from monitor.delivery import Dispatcher
from monitor.engine import Engine
from monitor.exposition import SliceCollector
from monitor.consumer import AssignmentChanges, Consumer, ReadAheadConsumer
from monitor.auth import RateLimiter, TokenStore
from monitor.server import Health, Intake, Server
from monitor.sinks import build_sink
from monitor.table import slice_table

log = logging.getLogger("lastmile")

_LAG_REFRESH_S = 5.0
_PUBLISH_EVERY_S = 1.0


class _StopRequested(Exception):
    """SIGTERM/SIGINT arrived before the daemon was connected."""


class InvalidLimitExceeded(RuntimeError):
    """Nearly every recent event was invalid: a misconfigured topic or field mapping."""


def _note(into: list[tuple[int, str]], index: int, reason: str) -> None:
    into.append((index, reason))


def consumer_config(cfg: Config) -> dict[str, Any]:
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    k = cfg.kafka
    conf: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "group_id": k.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": k.auto_offset_reset,
        # the same partition number of every topic on one member: the join stays local
        "partition_assignment_strategy": [RangePartitionAssignor],
        "max_poll_records": k.max_poll_records,
        "max_poll_interval_ms": int(k.max_poll_interval * 1000),
        "session_timeout_ms": int(k.session_timeout * 1000),
        "heartbeat_interval_ms": max(int(k.session_timeout * 1000) // 3, 100),
        "bootstrap_timeout_ms": 10_000,  # then retried with backoff, so a stop request is heard
    }
    conf.update(k.client)  # security and client settings pass straight through
    return conf


class Daemon:
    def __init__(self, cfg: Config, consumer_factory: Callable[..., Any] | None = None,
                 producer_factory: Callable[..., Any] | None = None, clock: Callable[[], float] = time.monotonic,
                 on_alert: Callable[[Alert], None] | None = None, freeze_gc: bool = False):
        """``freeze_gc``: the daemon owns the process (``lastmile run``) and, after each restore,
        leaves what exists out of the cyclic collector's full collections (see :meth:`_restore`)."""
        self.cfg = cfg
        self._freeze_gc = freeze_gc
        self.clock = clock
        self.store = CheckpointStore(cfg.resolve_path(cfg.checkpoint.directory), cfg.checkpoint.keep)
        self.collector = SliceCollector(cfg.http.series_budget)
        self.messages: Counter[tuple[str, str]] = Counter()
        self.batch_seconds = 0.0
        self.health = Health(liveness_timeout=max(60.0, cfg.kafka.session_timeout * 3))
        topics = cfg.kafka.topics
        self.topics = [t for t in (topics.predictions, topics.feedback, topics.outcomes, topics.submissions) if t]
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self.on_alert = on_alert or (lambda a: log.warning("%s %s %s", a.state.upper(), a.kind, a.summary))
        self.dispatcher = Dispatcher([build_sink(c) for c in cfg.sinks], cfg.delivery, cfg.alert_links)
        self.engine = Engine(cfg, ordered=True, wall_clock=time.time)
        self.positions: dict[Any, int] = {}  # TopicPartition → next offset to process
        self.last_ts: dict[Any, float] = {}
        self._active_at: dict[Any, float] = {}  # TopicPartition → when it last gave valid events (daemon clock)
        self._last_data = self.clock()  # when a poll last returned messages (or the daemon started)
        self.lag: dict[Any, int] = {}
        self.paused: set[Any] = set()
        self.stopping = False
        self.checkpoint_stats: dict[str, Any] = {"last_wall": 0.0, "duration": 0.0, "bytes": 0, "count": 0,
                                                 "kind": ""}
        self._recent_invalid: deque[bool] = deque(maxlen=cfg.kafka.invalid_limit.window)
        self._last_ckpt = clock()
        self._checkpointed: dict[str, dict[int, int]] = {}  # offsets the newest checkpoint covers
        self._commit_pending = False
        self._loaded: tuple[int, dict[str, dict[int, int]]] | None = None  # (sequence, offsets) the engine equals
        self._dirty = False  # processed anything since it was loaded
        self._last_publish = 0.0
        self._last_lag = 0.0
        self.consumer: Any = None
        self.producer: Any = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def request_stop(self, *_args: Any) -> None:
        self.stopping = True
        self.health.stopping = True

    def run(self, server: bool = True) -> int:
        http = None
        try:
            intake = self._intake()
        except ValueError as exc:  # the tokens document: unreadable or invalid (the message names the entry)
            log.error("%s", exc)
            return 2
        if server:
            http = Server(self.collector, self.health, self.cfg.http.host, self.cfg.http.port, intake=intake).start()
            log.info("serving http://%s:%d/metrics", self.cfg.http.host, http.port)
        previous = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._restore()  # a damaged checkpoint stops us before touching Kafka
            self.dispatcher.start()
            self._connect()
            while not self.stopping:
                self.step()
            self._shutdown()
            return 0
        except _StopRequested:
            log.info("stopped before connecting to Kafka")
            self._close(commit=False)
            return 0
        except CheckpointError as exc:
            log.error("%s", exc)
            return 2
        except InvalidLimitExceeded as exc:
            log.error("%s", exc)
            self._close(commit=False)
            return 3
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if http is not None:
                http.close()

    def _connect(self) -> None:
        """Connect, retrying with backoff while the brokers cannot be reached (live, not ready)."""
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        make_consumer = self._consumer_factory or (ReadAheadConsumer if self.cfg.kafka.read_ahead else Consumer)
        delay = 1.0
        while True:
            try:
                self.consumer = make_consumer(**consumer_config(self.cfg))
                break
            except KafkaError as exc:
                log.warning("cannot reach Kafka at %s (%s); retrying in %.0fs", self.cfg.kafka.bootstrap_servers,
                            exc, delay)
                deadline = self.clock() + delay
                while self.clock() < deadline:
                    if self.stopping:
                        raise _StopRequested from None
                    self.health.beat()
                    time.sleep(0.2)  # not the processing loop: nothing to process yet
                delay = min(delay * 2, 30.0)
        self.listener = AssignmentChanges()
        self.consumer.subscribe(self.topics, listener=self.listener)
        if self.cfg.kafka.dead_letter_topic or self.cfg.submissions.tokens is not None:
            make_producer = self._producer_factory or KafkaProducer
            self.producer = make_producer(bootstrap_servers=self.cfg.kafka.bootstrap_servers, **self.cfg.kafka.client)

    def _intake(self) -> Intake | None:
        """``POST /v1/submissions``, when tokens are configured (read once; only digests kept)."""
        sub = self.cfg.submissions
        if sub.tokens is None:
            return None
        tokens = TokenStore.parse(sub.tokens.read("submissions.tokens"))
        models = self.cfg.events.models
        return Intake(tokens, RateLimiter(sub.rate_per_minute, sub.burst, time.monotonic), self._append_submission,
                      self.engine.slices.dimensions, self.engine.metrics,
                      frozenset(models) if models is not None else None, sub.max_body_bytes, sub.max_active,
                      max_pending=sub.max_pending, cap=self.cfg.error_cap(), start_delay=sub.start_delay)

    def _append_submission(self, event: bytes) -> None:
        """From the HTTP thread: durable on the submissions topic before the API answers 202."""
        if self.producer is None:
            raise RuntimeError("not connected to Kafka yet")
        topic = self.cfg.kafka.topics.submissions
        assert topic is not None
        self.producer.send(topic, value=event).get(timeout=10)

    def _shutdown(self) -> None:
        deadline = self.clock() + self.cfg.shutdown_grace
        log.info("stopping: checkpoint, commit, close (grace %.0fs)", self.cfg.shutdown_grace)
        if self.health.assigned:
            self.checkpoint_and_commit(timeout=max(deadline - self.clock(), 1.0))
        self._close(commit=False)

    def _close(self, commit: bool) -> None:
        self.dispatcher.stop(timeout=5.0)
        if self.producer is not None:
            self.producer.close(timeout=5)
        if self.consumer is not None:
            self.consumer.close(autocommit=commit)

    # ---- state -------------------------------------------------------------------------------
    def _restore(self) -> dict[str, dict[int, int]]:
        """Make the engine equal the newest checkpoint; returns the offsets it covers.

        Skipped when the engine already is that checkpoint (loaded, nothing processed since).
        """
        if not self._dirty and self._loaded is not None and self.store.latest_sequence() == self._loaded[0]:
            return self._loaded[1]
        ckpt = self.store.latest()
        if self._freeze_gc:
            gc.unfreeze()  # the engine being replaced: collectable again, cycles included
        self.engine = Engine(self.cfg, ordered=True, wall_clock=time.time)
        if ckpt is not None:
            self.engine.restore(ckpt.data, ckpt.arrays, ckpt.earlier)
            log.info("restored checkpoint %s (%d outcomes%s)", ckpt.path.name, self.engine.outcomes,
                     f"; {len(ckpt.earlier)} earlier files of its chain" if ckpt.earlier else "")
        self.dispatcher.restore(ckpt.data.get("outbox") if ckpt is not None else None)
        offsets = ckpt.offsets if ckpt is not None else {}
        self._loaded = (ckpt.sequence if ckpt is not None else 0, offsets)
        self._dirty = False
        del ckpt
        if self._freeze_gc:
            # what exists now (modules, the restored state) is left out of the cyclic collector's
            # full collections, which would otherwise walk it again every few ten thousand events
            # (as in replay)
            gc.collect()
            gc.freeze()
        self.health.restored = True
        self._publish(force=True)
        return offsets

    def _on_assignment(self) -> None:
        """The assignment changed: roll back to the last checkpoint and seek every partition to it."""
        self.listener.changed = False
        offsets = self._restore()
        assignment = self.consumer.assignment()
        self.positions, self.last_ts, self.lag, self._active_at = {}, {}, {}, {}
        self._last_data = self.clock()  # what was held is read again before anything is released
        self.paused.clear()
        for tp in assignment:
            target = offsets.get(tp.topic, {}).get(tp.partition)
            if target is None:
                target = self.consumer.committed(tp)
            if target is None:
                if self.cfg.kafka.auto_offset_reset == "earliest":
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek_to_end(tp)
                continue
            self.consumer.seek(tp, target)
            self.positions[tp] = target
        if assignment:
            self.consumer.resume(*assignment)
        self.health.assigned = bool(assignment)
        self._last_lag = 0.0  # check the broker (and readiness) on the next turn
        log.info("assigned %d partitions", len(assignment))

    def checkpoint_and_commit(self, timeout: float | None = None) -> None:
        from kafka.structs import OffsetAndMetadata

        self._emit(self.engine.flush())
        if self.producer is not None:
            self.producer.flush(timeout=timeout)  # dead letters of these offsets are durable first
        offsets: dict[str, dict[int, int]] = {}
        for tp, pos in self.positions.items():
            offsets.setdefault(tp.topic, {})[tp.partition] = pos
        self._last_ckpt = self.clock()
        if offsets != self._checkpointed or self.checkpoint_stats["count"] == 0:
            started = self.clock()
            # incremental when the engine's state is the newest checkpoint's plus what it processed
            # since (restored from it, or its state was that checkpoint) and no full one is due
            parent = self.store.delta_parent()
            if parent is None or self._loaded is None or self._loaded[0] != parent:
                parent = None
            try:
                data, arrays = self.engine.state(delta=parent is not None)
                data["outbox"] = self.dispatcher.state()
                path = self.store.save(offsets, data, arrays, parent=parent)
            except BaseException:
                self._loaded = None  # what the engine's next increment would be relative to was not written
                raise
            self.checkpoint_stats.update(last_wall=time.time(), duration=self.clock() - started,
                                         bytes=path.stat().st_size, count=self.checkpoint_stats["count"] + 1,
                                         kind="full" if parent is None else "delta")
            self._checkpointed = offsets
            self._commit_pending = True
            self._loaded, self._dirty = (int(path.stem.split("-")[1]), offsets), False
        if self.positions and self._commit_pending:
            try:
                self.consumer.commit({tp: OffsetAndMetadata(pos, "", -1) for tp, pos in self.positions.items()},
                                     timeout_ms=int((timeout or 10.0) * 1000))
                self.health.broker_ok = True
                self._commit_pending = False
            except Exception as exc:  # the checkpoint holds the truth; the commit is retried next time
                log.warning("commit failed (%s); it is retried after the next checkpoint", exc)
                self.health.broker_ok = False

    # ---- one turn of the loop ----------------------------------------------------------------
    def step(self) -> None:
        self.health.beat()
        batch = self.consumer.poll(timeout_ms=500, max_records=self.cfg.kafka.max_poll_records)
        if self.listener.changed:
            self._on_assignment()  # this poll's records were fetched from the old positions
            return
        self._process(batch)
        now = self.clock()
        # (and at once when nothing came while partitions are paused: those still read may have
        # caught up, and the paused ones would otherwise wait up to _LAG_REFRESH_S with data;
        # not while the broker does not answer, when each try would wait for it)
        if now - self._last_lag >= _LAG_REFRESH_S or (not batch and self.paused and self.health.broker_ok):
            self._refresh_lag()
            self._align()
            self._last_lag = now
        if now - self._last_ckpt >= self.cfg.checkpoint.interval and self.health.assigned:
            self.checkpoint_and_commit()
        self._publish()

    def _process(self, batch: dict[Any, list[Any]]) -> None:
        if not batch:
            # nothing read for kafka.idle_partition: every partition has gone idle, and what they
            # held back goes through (only then: between fetches, caught-up partitions may look
            # finished while more is on its way)
            if (self.engine.held or self.engine.held_submissions) \
                    and self.clock() - self._last_data >= self.cfg.kafka.idle_partition:
                self._dirty = True
                self._release()
            return
        self._dirty = True
        self._last_data = self.clock()
        started = self.clock()
        engine = self.engine
        limit = self.cfg.kafka.invalid_limit
        recent = self._recent_invalid
        for tp, messages in batch.items():
            if not messages:
                continue
            bad: list[tuple[int, str]] = []
            self._emit(engine.feed_many([m.value if m.value is not None else b"" for m in messages],
                                        on_invalid=partial(_note, bad),
                                        submissions=tp.topic == self.cfg.kafka.topics.submissions))
            if engine.last_event_ts is not None:  # valid events: junk alone does not keep a partition active
                self.last_ts[tp] = engine.last_event_ts
                self._active_at[tp] = started
            flags = [False] * len(messages)
            for i, reason in bad:
                flags[i] = True
                self._dead_letter(messages[i], reason)
            recent.extend(flags)
            self.positions[tp] = messages[-1].offset + 1
            self.messages[(tp.topic, "valid")] += len(messages) - len(bad)
            if bad:
                self.messages[(tp.topic, "invalid")] += len(bad)
        self._release()
        self.batch_seconds = self.clock() - started
        if len(recent) == recent.maxlen and sum(recent) > limit.ratio * len(recent):
            raise InvalidLimitExceeded(
                f"{sum(recent)} of the last {len(recent)} events on {self.topics} were invalid "
                f"(limit {limit.ratio:.0%}; by reason so far: {dict(engine.invalid)}). Check kafka.topics and "
                f"events.fields; nothing after the last checkpoint was committed, so the events are read again "
                f"once the config is fixed.")

    def _release(self) -> None:
        """What the event-time horizon has passed goes to the detectors."""
        engine = self.engine
        horizon = self._event_time_horizon()
        self._emit(engine.release(horizon))
        self._emit(engine.flush())
        # submissions whose model went quiet: decide at their deadline once nothing earlier can come
        self._emit(engine.expire_submissions(min(horizon, engine.watermark)))
        for record in engine.bounty.take_records():  # the API serves the current ones
            log.info("lastmile: VERDICT %s %s for %s (%s, submitted by %s)", record["status"], record["hypothesis"],
                     record["group_text"], record["model"], ", ".join(record["submitters"]))

    def _event_time_horizon(self) -> float:
        """No outcome earlier than this can still arrive: the least event time over partitions with
        messages left to read or read recently (each partition is in event-time order; one caught
        up may receive more at any moment, until it has been idle for ``kafka.idle_partition``), or
        +inf when all are idle. Unknown (no fetch answered yet, or nothing valid read from a
        partition that is behind): -inf."""
        horizon = math.inf
        now = self.clock()
        assignment = self.consumer.assignment()
        if not assignment:
            return -math.inf  # (re)joining the group: nothing is known about any partition
        for tp in assignment:
            high = self.consumer.highwater(tp)
            if high is None:
                return -math.inf
            pos = self.positions.get(tp)
            if pos is not None and pos >= high or pos is None and high == 0:  # caught up
                if now - self._active_at.get(tp, -math.inf) >= self.cfg.kafka.idle_partition or tp not in self.last_ts:
                    continue
                horizon = min(horizon, self.last_ts[tp])
                continue
            ts = self.last_ts.get(tp)
            if ts is None:
                return -math.inf
            horizon = min(horizon, ts)
        return horizon

    def _dead_letter(self, msg: Any, reason: str) -> None:
        if self.producer is None:
            return
        headers = [("lastmile-reason", reason.encode()),
                   ("lastmile-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode())]
        self.producer.send(self.cfg.kafka.dead_letter_topic, value=msg.value, key=msg.key, headers=headers)

    def _emit(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.on_alert(alert)
            if self.dispatcher.sinks:
                self.dispatcher.submit(alert.to_dict())

    def _refresh_lag(self) -> None:
        assignment = list(self.positions) or list(self.consumer.assignment())
        if not assignment:
            return
        try:
            ends = self.consumer.end_offsets(assignment, timeout_ms=2000)
            self.health.broker_ok = True
        except Exception as exc:
            log.warning("broker unreachable: %s", exc)
            self.health.broker_ok = False
            return
        for tp, end in ends.items():
            self.lag[tp] = max(int(end) - self.positions.get(tp, int(end)), 0)

    def _align(self) -> None:
        """Pause partitions running far ahead in event time of the slowest one that has data."""
        behind = [self.last_ts[tp] for tp, lag in self.lag.items() if lag > 0 and tp in self.last_ts]
        if not behind:
            to_pause: set[Any] = set()
        else:
            horizon = min(behind) + self.cfg.kafka.max_event_time_skew
            to_pause = {tp for tp, ts in self.last_ts.items() if ts > horizon and self.lag.get(tp, 0) > 0}
        if to_pause - self.paused:
            self.consumer.pause(*(to_pause - self.paused))
        if self.paused - to_pause:
            self.consumer.resume(*(self.paused - to_pause))
        self.paused = to_pause

    def _publish(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_publish < _PUBLISH_EVERY_S:
            return
        self._last_publish = now
        table = slice_table(self.engine)
        table["daemon"] = {
            "lag": [{"topic": tp.topic, "partition": tp.partition, "lag": lag} for tp, lag in sorted(self.lag.items())],
            "paused": sorted(f"{tp.topic}/{tp.partition}" for tp in self.paused),
            "checkpoint": dict(self.checkpoint_stats),
            "messages": [{"topic": t, "result": r, "count": c} for (t, r), c in sorted(self.messages.items())],
            "deliveries": [{"sink": k, "result": r, "count": c} for k, r, c in self.dispatcher.stats_snapshot()],
            "outbox": self.dispatcher.pending,
            "batch_seconds": self.batch_seconds,
        }
        self.collector.publish(table)


def run_daemon(cfg: Config) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Daemon(cfg, freeze_gc=True).run()
