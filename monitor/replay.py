"""Replay: the engine over JSONL files (plain or .gz), for audits and outside evaluators.

With ``replay.order_by_event_time`` (the default) events are processed in event-time order
(ties keep file order), so the result does not depend on how the files were split or
concatenated; otherwise lines are streamed in file order. Either way, event times far ahead
of the stream are judged in file order (:mod:`monitor.future`).

Ordering is an external merge sort, so memory does not grow with the input: decoded events
are kept in a buffer of ``replay.sort_buffer``; each time it fills, it is sorted by event time
and spilled to a temporary file as a *run* (msgpack blocks of :data:`BLOCK` events), and at the
end the runs are merged (:func:`heapq.merge`, stable: a tie goes to the earlier run, so the
order is exactly that of a stable sort of the whole input in memory); runs that do not overlap
in event time (input already in order, as files nearly always are) are read one after the
other, with nothing to compare. Input that fits in one buffer is sorted in memory and writes no
file. The merge holds one block per run, and at most
:data:`FAN_IN` runs are merged at once (more are first merged into longer runs, in levels), so
neither memory nor open files grow with the input; the runs take about 85 bytes an event of
disk (outcomes with precomputed errors), in ``replay.spill_directory``.
"""

from __future__ import annotations

import gc
import gzip
import heapq
import os
import signal
import sys
import tempfile
import threading
from contextlib import ExitStack, contextmanager
from itertools import chain, islice
from operator import attrgetter
from pathlib import Path
from sys import intern
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Union

import msgspec

from monitor.alerts import Alert
from monitor.engine import Engine
from monitor.events import Event, InvalidEvent
from monitor.submissions import Submission

Item = Union[Event, Submission]

FAN_IN = 64  # runs merged at once; beyond, groups of runs are merged into longer runs first
SETTLE_EVERY = 1 << 16  # events between two freezes of what has lived since (see _collector_tuned)
YOUNG_EVERY = 20_000  # container allocations between two young collections during a replay (700 by default)
BLOCK = 1024  # events per msgpack block of a run (at most; fewer with a small buffer, see block_size)
_BIG_INT = 1  # msgpack extension code: an integer beyond 64 bits (its decimal digits)
_ts = attrgetter("ts")


def _lines(paths: list[Path], progress: bool) -> Iterator[bytes]:
    total = sum(p.stat().st_size for p in paths)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="read", file=sys.stderr, leave=False)
    try:
        for path in paths:
            with open(path, "rb") as raw:
                fh = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
                last = 0
                for line in fh:
                    if bar is not None:
                        pos = raw.tell()
                        if pos - last > 1 << 20:
                            bar.update(pos - last)
                            last = pos
                    line = line.strip()
                    if line:
                        yield line
                if bar is not None:
                    bar.update(raw.tell() - last)
    finally:
        if bar is not None:
            bar.close()


@contextmanager
def _collector_tuned() -> Iterator[Callable[[], None]]:
    """The cyclic garbage collector set for a long run of short-lived objects, until the replay ends.

    * Objects that exist before it (modules, the engine, the caller's) are left out of its full
      collections (:func:`gc.freeze`), and so are those that have lived a while, each time the
      replay calls the ``settle`` this yields (every :data:`SETTLE_EVERY` events: the sort buffer,
      the join's pending entries, the detectors' state). Otherwise every full collection walks
      all of them, and full collections come often: one each time the survivors of young
      collections grow by a quarter of what was walked last.
    * Young collections run every :data:`YOUNG_EVERY` container allocations instead of 700:
      each one also walks the young big containers (a new sort buffer, the join's columns after
      a rebuild), so there it is the number of collections that costs.

    Measured on 392,000 prediction/feedback events: 2.6 s of a 17 s replay in the collector
    before, 0.2 s after. Events, outcomes and decoded blocks are freed by reference counting as
    before; the collector only finds cycles, and a replay makes few (about 5,000 objects in
    cycles over that whole replay, none per event: an invalid event makes none). Frozen ones wait
    until the end. Left alone when the caller froze objects itself (it manages the collector).
    """
    if gc.get_freeze_count():
        yield lambda: None
        return
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(threshold[0], YOUNG_EVERY), *threshold[1:])
    try:
        yield gc.freeze
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


@contextmanager
def _terminated_like_interrupted() -> Iterator[None]:
    """SIGTERM (a timeout, a job stopped) ends the replay as Ctrl-C does, by an exception, so the
    runs are deleted; by default it would end the process at once and leave them. Only in the
    main thread, and only if nobody handles SIGTERM already (the exit status stays 128 + 15)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# ---- runs: sorted events in temporary files ----------------------------------------------------
def _wrap(value: Any) -> Any:
    """``value`` with integers msgpack cannot hold (beyond 64 bits; JSON allows them) as extensions."""
    if type(value) is int and not -(1 << 63) <= value < 1 << 64:
        return msgspec.msgpack.Ext(_BIG_INT, str(value).encode())
    if type(value) is list:
        return [_wrap(v) for v in value]
    if type(value) is dict:
        return {k: _wrap(v) for k, v in value.items()}
    return value


def _unwrap(code: int, data: memoryview) -> Any:
    if code != _BIG_INT:
        raise ValueError(f"unknown msgpack extension {code} in a replay run")
    return int(bytes(data))


def _encodable(item: Item) -> Item:
    if type(item) is Submission:
        return Submission(**{**item.__dict__, "group": _wrap(item.group)})
    assert isinstance(item, Event)
    return item._replace(output=_wrap(item.output), label=_wrap(item.label))


def _reintern(block: list[Item]) -> list[Item]:
    """Attribute values interned again, as the decoder interns them: the slice index looks them
    up for every outcome and finds its own keys by identity (measured: 0.4 µs an event less with
    than without, the interning included)."""
    for ev in block:
        if type(ev) is Event:  # not a submission
            attrs = ev.attributes
            for key, value in attrs.items():
                if len(value) <= 64:
                    attrs[key] = intern(value)
    return block


def block_size(sort_buffer: int) -> int:
    """Events per block: a merge holds one decoded block of each of up to :data:`FAN_IN` runs, so
    at most one buffer's worth of events (far less with the default buffer)."""
    return max(16, min(BLOCK, sort_buffer // FAN_IN))


class Runs:
    """Sorted runs of events in temporary files, in input order, and their stable merge.

    A run is a sequence of frames: 4 bytes of length (little-endian), then one msgpack array of
    up to ``block`` items (an :class:`Event` encodes as an array, a :class:`Submission` as a
    map: decoded back to exactly the same values and types). The directory is made at the first
    spill and deleted, with every run, by :meth:`close` (also on error).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, block: int = BLOCK):
        self._parent = directory
        self.block = block
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.paths: list[Path] = []  # in input order: every item of a run precedes the next run's
        self._made = 0
        self._bounds: dict[Path, tuple[float | None, float | None]] = {}  # a run's first and last event time
        self._stack = ExitStack()  # the runs being read: closed by close(), also on error
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(list[Item], ext_hook=_unwrap).decode

    def spill(self, items: Iterable[Item]) -> None:
        """Write ``items`` (sorted by ``ts``; a list, or an iterator) as the next run."""
        self.paths.append(self._write(items))

    def _write(self, items: Iterable[Item]) -> Path:
        if self._tmp is None:
            if self._parent is not None:
                Path(self._parent).mkdir(parents=True, exist_ok=True)
            self._tmp = tempfile.TemporaryDirectory(prefix="lastmile-replay-", dir=self._parent)
        self._made += 1
        path = Path(self._tmp.name) / f"run-{self._made:06d}"
        size = self.block
        if isinstance(items, list):
            blocks: Iterable[list[Item]] = (items[i:i + size] for i in range(0, len(items), size))
        else:
            it = iter(items)
            blocks = iter(lambda: list(islice(it, size)), [])
        encode = self._encode
        first = last = None
        with open(path, "wb") as fh:
            for block in blocks:
                if first is None:
                    first = block[0].ts
                last = block[-1].ts
                try:
                    data = encode(block)  # the whole block in C
                except OverflowError:  # an output, label or group value beyond 64 bits
                    data = encode([_encodable(item) for item in block])
                fh.write(len(data).to_bytes(4, "little"))
                fh.write(data)
        self._bounds[path] = (first, last)
        return path

    def _blocks(self, path: Path) -> Generator[list[Item], None, None]:
        with open(path, "rb") as fh:
            read, decode = fh.read, self._decode
            while head := read(4):
                yield _reintern(decode(read(int.from_bytes(head, "little"))))

    def _merged(self, paths: list[Path]) -> Iterator[Item]:
        runs = []
        for path in paths:
            blocks = self._blocks(path)
            self._stack.callback(blocks.close)  # its file is closed at the end, or on error
            runs.append(chain.from_iterable(blocks))
        if self._disjoint(paths):  # (input already in event-time order: one run after the other)
            return chain.from_iterable(runs)
        return heapq.merge(*runs, key=_ts)

    def _disjoint(self, paths: list[Path]) -> bool:
        """Each run ends no later than the next begins: their stable merge is one after the other
        (a tie goes to the earlier run either way)."""
        bounds = [self._bounds[p] for p in paths if self._bounds[p][0] is not None]
        return all(a[1] <= b[0] for a, b in zip(bounds, bounds[1:]))  # type: ignore[operator]

    def merged(self) -> Iterator[Item]:
        """Every item of every run, stably sorted by ``ts``. Runs are merged :data:`FAN_IN` at a
        time (longer runs first while there are more), so memory and open files stay bounded."""
        while len(self.paths) > FAN_IN:
            longer = []
            for i in range(0, len(self.paths), FAN_IN):
                group = self.paths[i:i + FAN_IN]
                if len(group) == 1:
                    longer.append(group[0])
                    continue
                try:
                    longer.append(self._write(self._merged(group)))
                finally:
                    self._close_files()
                for p in group:
                    p.unlink()
                    del self._bounds[p]
            self.paths = longer
        return self._merged(self.paths)

    def _close_files(self) -> None:
        self._stack.close()
        self._stack = ExitStack()

    def __enter__(self) -> Runs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._close_files()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


def replay(engine: Engine, paths: list[str | os.PathLike[str]], on_alert: Callable[[Alert], None] | None = None,
           progress: bool | None = None) -> list[Alert]:
    """Run every event of ``paths`` through ``engine``; returns all alert transitions in order."""
    files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"no such file: {f}")
    if progress is None:
        progress = sys.stderr.isatty()
    alerts: list[Alert] = []

    def emit(batch: list[Alert]) -> None:
        for a in batch:
            alerts.append(a)
            if on_alert:
                on_alert(a)

    if engine.cfg.replay.order_by_event_time:
        engine.ordered = True  # outcomes reach the detectors in (ts, id) order, like the daemon's
        cfg = engine.cfg.replay
        runs = Runs(engine.cfg.resolve_path(cfg.spill_directory) if cfg.spill_directory else None,
                    block_size(cfg.sort_buffer))
        with _terminated_like_interrupted(), _collector_tuned() as settle, runs:
            # pass 1: decode and screen in file order (times far ahead are judged in file order,
            # before sorting); every full buffer is sorted and spilled as a run
            buf: list[Item] = []
            limit, count, read = cfg.sort_buffer, 0, 0
            screen = engine.screen
            for ev in engine.decoder.decode_stream(_lines(files, progress)):
                if isinstance(ev, InvalidEvent):
                    engine.invalid[ev.reason] += 1
                    continue
                buf += screen(ev)
                read += 1
                if read % SETTLE_EVERY == 0:
                    settle()
                if len(buf) >= limit:
                    count += len(buf)
                    buf.sort(key=_ts)  # stable: ties keep file order
                    runs.spill(buf)
                    buf.clear()
            buf += engine.screen_end()
            count += len(buf)
            buf.sort(key=_ts)
            ordered: Iterable[Item] = buf
            if runs.paths:  # pass 2: the runs merged (the last buffer too: memory is the engine's now)
                if buf:
                    runs.spill(buf)
                    buf.clear()
                ordered = runs.merged()
            if progress:
                from tqdm import tqdm

                ordered = tqdm(ordered, total=count, desc="process", unit="ev", unit_scale=True, file=sys.stderr,
                               leave=False, mininterval=0.25)
            feed, release = engine.feed_event, engine.release
            for n, item in enumerate(ordered, 1):
                out = feed(item)
                if out:
                    emit(out)
                if n % 4096 == 0:
                    emit(release(item.ts))  # every later event, and so outcome, is at least this late
                    if n % SETTLE_EVERY == 0:
                        settle()
    else:
        for line in _lines(files, progress):
            emit(engine.feed(line))
    emit(engine.drain())
    return alerts
