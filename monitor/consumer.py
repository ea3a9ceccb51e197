"""The daemon's Kafka consumer: kafka-python's, mended (:class:`Consumer`), optionally in a second
process one poll ahead of the engine (:class:`ReadAheadConsumer`, ``kafka.read_ahead``).

kafka-python parses fetched record batches in Python, so merely reading the topics costs about
as much CPU as monitoring them. :class:`ReadAheadConsumer` runs a :class:`Consumer` in a child
process and stands in for it in the daemon, with the methods the daemon calls: after a poll
returns records, the child fetches the next poll's while the engine processes these, so reading
and processing overlap on two cores.

Exactly-once is unaffected. The daemon's positions, checkpoints and commits are those of the
records it was handed, never the child's read position; and whenever the daemon seeks, pauses or
resumes, the child forgets what it read ahead, seeking each of those partitions back to the first
record it had not handed over. So the daemon sees what a consumer in its own process would have
given it: the same records of each partition, in order, from the same positions. A rebalance
during a read-ahead is reported with the records of that poll, which the daemon discards.

Each poll's reply also carries the assignment and each assigned partition's high watermark as the
child knows them when it answers; :meth:`ReadAheadConsumer.assignment` and
:meth:`ReadAheadConsumer.highwater` return those. So the questions the daemon asks after every
batch (for its event-time horizon) never wait for the read-ahead in progress: asked of the child,
each waited for the fetch under way to end, and the two processes took turns instead of
overlapping (the daemon spent half its time waiting). Neither value needs the network: kafka-python
answers both from what its last fetch and rebalance left, so they are what the daemon's own
consumer would have answered at that poll.

The child ignores SIGINT and SIGTERM: the daemon handles them and still needs the consumer to
commit before it exits. It ends when told to close, or when the daemon's end of the pipe closes
(the daemon exited or was killed), without committing anything.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from kafka import ConsumerRebalanceListener, KafkaConsumer

#: what the child fetches ahead waits at most this long for records: a request the daemon makes
#: meanwhile (commit, seek, end_offsets, ...) is answered after it
_AHEAD_TIMEOUT_MS = 100
#: the daemon is gone: leaving its group may take this long (it can wait for a join in progress)
_ORPHAN_CLOSE_MS = 3000
#: calls that change what the next poll returns: the child rewinds what it read ahead first
_REWINDING = frozenset({"seek", "seek_to_beginning", "seek_to_end", "pause", "resume", "subscribe"})


class Record(NamedTuple):
    """A consumed message: what the daemon reads of kafka-python's ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class ConsumerExited(RuntimeError):
    """The consumer's process ended without being told to."""


class AssignmentChanges(ConsumerRebalanceListener):
    """Rebalance callbacks that only note that the assignment changed: they run on kafka-python's
    IO thread, while poll() waits (the daemon's, and the read-ahead child's, which reports it with
    the next poll)."""

    def __init__(self) -> None:
        self.changed = False

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.changed = True

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.changed = True


class Consumer(KafkaConsumer):  # type: ignore[misc]
    """kafka-python's consumer, with a 3.0 bug that stops a resumed partition for good worked
    around before every poll (a no-op with a kafka-python without that code).

    Records fetched for a partition that is then paused are parked, and are given back once it is
    resumed (KAFKA-7548, dpkp/kafka-python#2981), but only when the fetcher's in-line slot is
    ``None``. After its records are taken, that slot holds a drained, falsy ``PartitionRecords``,
    not ``None``, so parked records wait forever, and no new fetch is sent for their partition
    while they wait. The partition is resumed but never read again (with tansu: 4 of 6 seeded
    pause/resume runs of a plain KafkaConsumer stalled; with this, none). Emptying the drained
    slot is what kafka-python itself treats it as everywhere else, so nothing else changes.
    """

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        fetcher = getattr(self, "_fetcher", None)
        current = getattr(fetcher, "_next_partition_records", None)
        if current is not None and not current:
            fetcher._next_partition_records = None  # type: ignore[union-attr]
        return super().poll(*args, **kwargs)


def _columns(batch: dict[Any, list[Any]]) -> list[tuple[str, int, list[tuple[int, bytes | None, bytes | None]]]]:
    """A poll's records as plain tuples (cheap to pickle): per partition, (offset, key, value)."""
    return [(tp.topic, tp.partition, [(m.offset, m.key, m.value) for m in messages])
            for tp, messages in batch.items() if messages]


def _marks(consumer: KafkaConsumer) -> list[tuple[str, int, int | None]]:
    """Each assigned partition's high watermark, as (topic, partition, offset or None); one that a
    rebalance on the IO thread revokes meanwhile is left out (the change comes with the next poll)."""
    from kafka.errors import IllegalStateError

    out = []
    for tp in consumer.assignment():
        try:
            out.append((tp.topic, tp.partition, consumer.highwater(tp)))
        except (IllegalStateError, KeyError):
            continue
    return out


def _send_error(conn: Connection, exc: BaseException) -> None:  # pragma: no cover - runs in the child
    try:
        conn.send(("error", exc))
    except Exception:  # noqa: BLE001 - an exception that does not pickle: its type (kafka's, if it is one) and text
        from kafka.errors import KafkaError

        conn.send(("error", (KafkaError if isinstance(exc, KafkaError) else RuntimeError)(
            f"{type(exc).__name__}: {exc}")))


def _serve(conn: Connection, config: dict[str, Any]) -> None:  # pragma: no cover - runs in the child
    """The child: a KafkaConsumer that answers the daemon's calls, reading one poll ahead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from kafka import TopicPartition

    try:
        consumer = Consumer(**config)
    except BaseException as exc:  # noqa: BLE001 - handed to the daemon, which decides
        _send_error(conn, exc)
        return
    conn.send(("ok", None))
    changes = AssignmentChanges()  # reported, and cleared, with the next poll the daemon makes
    ahead: list[Any] | None = None  # records fetched before the daemon asked for them
    reading_ahead, ahead_max = False, None  # (data is flowing: fetch the next poll, of this many records)

    def rewind() -> None:
        nonlocal ahead
        if ahead:
            assigned = consumer.assignment()
            for topic, partition, items in ahead:
                tp = TopicPartition(topic, partition)
                if tp in assigned:
                    consumer.seek(tp, items[0][0])
        ahead = None

    try:
        while True:
            if reading_ahead and ahead is None and not conn.poll(0):
                ahead = _columns(consumer.poll(timeout_ms=_AHEAD_TIMEOUT_MS, max_records=ahead_max)) or None
                reading_ahead = ahead is not None  # caught up: wait to be asked
                continue
            try:
                name, args, kwargs = conn.recv()
            except EOFError:  # the daemon is gone
                break
            try:
                if name == "poll":
                    records = ahead if ahead is not None else _columns(consumer.poll(**kwargs))
                    # the flag first: a rebalance after it is reported with the next poll, and
                    # the assignment read after it is never older than what the flag reports
                    changed, changes.changed = changes.changed, False
                    result: Any = (changed, records, _marks(consumer))
                    ahead = None
                    reading_ahead, ahead_max = bool(records), kwargs.get("max_records")
                elif name == "close":
                    consumer.close(**kwargs)
                    conn.send(("ok", None))
                    return
                else:
                    if name in _REWINDING:
                        rewind()
                    if name == "subscribe":
                        kwargs = {**kwargs, "listener": changes}
                    result = getattr(consumer, name)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - raised again in the daemon
                _send_error(conn, exc)
                continue
            conn.send(("ok", result))
    except OSError:  # the daemon is gone (its end of the pipe closed while we wrote)
        pass
    consumer.close(autocommit=False, timeout_ms=_ORPHAN_CLOSE_MS)  # the daemon is gone: leave the group, briefly


class ReadAheadConsumer:
    """A KafkaConsumer in a child process (see the module docstring); ``config`` is kafka-python's.

    Raises what ``KafkaConsumer(**config)`` raises (e.g. NoBrokersAvailable) from the constructor.
    """

    def __init__(self, **config: Any):
        # a fresh interpreter running this module (not multiprocessing's spawn, which imports the
        # caller's main module again), connected by a socket pair
        ours, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen([sys.executable, "-m", "monitor.consumer", str(theirs.fileno())],
                                             pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        self._conn = Connection(ours.detach())
        self._listener: Any = None
        self._highwater: dict[Any, int | None] = {}  # assigned partition → its high watermark, as of the last poll
        self._closed = False
        try:
            self._conn.send(config)
            self._call_reply()
        except BaseException:
            self._end()
            raise

    def _exited(self) -> ConsumerExited:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=1)
        return ConsumerExited(f"the Kafka consumer process exited (status {self._process.returncode})")

    def _call_reply(self) -> Any:
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            raise self._exited() from None
        if status == "error":
            raise value
        return value

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise RuntimeError("the consumer is closed")
        try:
            self._conn.send((name, args, kwargs))
        except OSError:
            raise self._exited() from None
        return self._call_reply()

    # ---- what the daemon calls ---------------------------------------------------------------
    def subscribe(self, topics: Sequence[str], listener: Any = None) -> None:
        """``listener``: only told that the assignment changed (its callbacks run in this process,
        when the poll that saw the change returns)."""
        self._listener = listener
        self._call("subscribe", list(topics))

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Record]]:
        from kafka import TopicPartition

        changed, records, marks = self._call("poll", timeout_ms=timeout_ms, max_records=max_records)
        self._highwater = {TopicPartition(topic, partition): high for topic, partition, high in marks}
        if changed and self._listener is not None:
            assigned = self.assignment()
            self._listener.on_partitions_assigned(assigned)
        return {TopicPartition(topic, partition): [Record(topic, partition, offset, key, value)
                                                   for offset, key, value in items]
                for topic, partition, items in records}

    def assignment(self) -> set[Any]:
        """The partitions assigned as of the last poll (see the module docstring)."""
        return set(self._highwater)

    def committed(self, tp: Any) -> int | None:
        return self._call("committed", tp)  # type: ignore[no-any-return]

    def seek(self, tp: Any, offset: int) -> None:
        self._call("seek", tp, offset)

    def seek_to_beginning(self, *tps: Any) -> None:
        self._call("seek_to_beginning", *tps)

    def seek_to_end(self, *tps: Any) -> None:
        self._call("seek_to_end", *tps)

    def pause(self, *tps: Any) -> None:
        self._call("pause", *tps)

    def resume(self, *tps: Any) -> None:
        self._call("resume", *tps)

    def highwater(self, tp: Any) -> int | None:
        """As of the last poll (see the module docstring); None for a partition not assigned then."""
        return self._highwater.get(tp)

    def end_offsets(self, tps: list[Any], timeout_ms: int | None = None) -> dict[Any, int]:
        return self._call("end_offsets", tps, timeout_ms=timeout_ms)  # type: ignore[no-any-return]

    def commit(self, offsets: dict[Any, Any], **kwargs: Any) -> None:
        self._call("commit", offsets, **kwargs)

    def close(self, autocommit: bool = True) -> None:
        if self._closed:
            return
        try:
            self._call("close", autocommit=autocommit)
        except ConsumerExited:
            pass
        finally:
            self._end()

    def _end(self) -> None:
        self._closed = True
        self._conn.close()  # (the child sees the end of the pipe and exits, if it has not)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _main(fd: int) -> None:  # pragma: no cover - runs in the child
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s (lastmile consumer): %(message)s")
    conn = Connection(fd)
    try:
        config = conn.recv()
    except (EOFError, OSError):
        return
    _serve(conn, config)


if __name__ == "__main__":
    _main(int(sys.argv[1]))
