"""Replay: the engine over JSONL files (plain or .gz), for audits and outside evaluators.

With ``replay.order_by_event_time`` (the default) events are processed in event-time order
(ties keep file order), so the result does not depend on how the files were split or
concatenated; otherwise lines are streamed in file order. Either way, event times far ahead
of the stream are judged in file order (:mod:`monitor.future`).

Input already in event-time order up to a bounded lateness, as files nearly always are, is fed
as it is read (:func:`_in_order`, ``replay.in_order_window``): the events are sorted a window at a
time and merged with a window's worth kept back, which is exactly the stable sort's order as long
as no event comes after more than a window of events stamped later than it. The first that does
ends the attempt: the engine is reset and the input is replayed from the start through runs.

Otherwise ordering is an external merge sort, so memory does not grow with the input: decoded events
are kept in a buffer of ``replay.sort_buffer``; each time it fills, its first ``sort_buffer``
events are sorted by event time and spilled to a temporary file as a *run* (msgpack blocks of
:data:`BLOCK` events, by columns: :class:`Runs`), and at the end the runs are merged (stable: a
tie goes to the earlier run, so the order is exactly that of a stable sort of the whole input in
memory, however the runs were cut). The merge hands on the longest stretch of one run that
precedes every other run's next item, so runs that do not overlap in event time (input in order
but for an event later than the window) go through a block at a time, with nothing compared per
event. Input that fits in one buffer is sorted in memory and writes no file. The merge holds one
block per run, and at most :data:`FAN_IN` runs are merged at once (more are first merged into
longer runs, in levels), so neither memory nor open files grow with the input; the runs take
about 66 bytes an event of disk (outcomes with precomputed errors), in
``replay.spill_directory``.

Events are decoded, screened, joined and scored a batch at a time (:meth:`Decoder.decode_many`,
:meth:`Engine.screen_many`, :meth:`Engine.feed_events`), and the cyclic garbage collector is
tuned for the run (:func:`_collector_tuned`).
"""

from __future__ import annotations

import gc
import gzip
import heapq
import math
import os
import signal
import sys
import tempfile
import threading
from contextlib import ExitStack, contextmanager
from bisect import bisect_left, bisect_right
from itertools import chain, count, islice, repeat
from operator import attrgetter
from pathlib import Path
from sys import intern
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Union

import msgspec

from monitor.alerts import Alert
from monitor.engine import Engine
from monitor.events import Event, InvalidEvent, attribute_dict
from monitor.submissions import Submission

Item = Union[Event, Submission]

FAN_IN = 64  # runs merged at once; beyond, groups of runs are merged into longer runs first
RELEASE_EVERY = 4096  # events between two releases of held outcomes (replay's watermark moves on)
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


def block_size(sort_buffer: int) -> int:
    """Events per block: a merge holds one decoded block of each of up to :data:`FAN_IN` runs, so
    at most one buffer's worth of events (far less with the default buffer)."""
    return max(16, min(BLOCK, sort_buffer // FAN_IN))


Context = tuple[Union[str, None], Union[str, None], dict[str, str]]  # an event's model, tenant and attributes
#: a block as written: event times (of the events), kinds, ids, context codes, the contexts, outputs,
#: labels, errors, units, and the submissions among the events with their places in the block
_Block = tuple[list[float], list[str], list[str], list[int], list[Context], list[Any], list[Any],
               list[Union[float, None]], list[Union[float, None]], list[tuple[int, Submission]]]
_SHARED_MAX = 10_000  # distinct contexts Runs keeps one shared copy of (then forgets them, and again)


class Runs:
    """Sorted runs of events in temporary files, in input order, and their stable merge.

    A run is a sequence of frames: 4 bytes of length (little-endian), then one msgpack block of
    up to ``block`` items, by columns (:data:`_Block`): each field of the events as one array,
    and each distinct (model, tenant, attributes) once, with a code per event; submissions
    apart, with their places. Encoding and decoding are a few C-level passes per block, and the
    events read back share one copy of each context, interned as the decoder interns them (the
    slice index finds its keys by identity). Decoded back to exactly the same values and types.
    The directory is made at the first spill and deleted, with every run, by :meth:`close` (also
    on error).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, block: int = BLOCK):
        self._parent = directory
        self.block = block
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.paths: list[Path] = []  # in input order: every item of a run precedes the next run's
        self._made = 0
        self._stack = ExitStack()  # the runs being read: closed by close(), also on error
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(_Block, ext_hook=_unwrap).decode
        self._shared: dict[tuple[Any, ...], Context] = {}  # a context's values → its one shared copy

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
        with open(path, "wb") as fh:
            for block in blocks:
                data = self._pack(block)
                fh.write(len(data).to_bytes(4, "little"))
                fh.write(data)
        return path

    def _pack(self, block: list[Item]) -> bytes:
        events: list[Event] = [x for x in block if type(x) is Event]
        subs = [(i, x) for i, x in enumerate(block) if type(x) is not Event] if len(events) < len(block) else []
        if not events:
            return self._encode(([], [], [], [], [], [], [], [], [], subs))
        kinds, ids, times, models, tenants, attrs, outputs, labels, errors, units = zip(*events)
        # one code per distinct context: the decoder shares its strings and attribute dicts, so
        # identity finds them (an event whose context is a copy is just one more entry)
        first: dict[tuple[int, int, int], int] = {}
        codes = list(map(first.setdefault, zip(map(id, models), map(id, tenants), map(id, attrs)), count()))
        dense = {at: code for code, at in enumerate(first.values())}
        contexts = [(models[at], tenants[at], attrs[at]) for at in dense]
        columns = (times, kinds, ids, list(map(dense.__getitem__, codes)), contexts, outputs, labels, errors, units, subs)
        try:
            return self._encode(columns)  # the whole block in C
        except OverflowError:  # an output, label or group value beyond 64 bits
            return self._encode((*columns[:5], [_wrap(v) for v in outputs], [_wrap(v) for v in labels],
                                 errors, units, [(i, _encodable(x)) for i, x in subs]))

    def _unpack(self, data: bytes) -> tuple[list[Item], list[float]]:
        """A block's items and their event times."""
        times, kinds, ids, codes, contexts, outputs, labels, errors, units, subs = self._decode(data)
        contexts = [self._share(c) for c in contexts]
        models, tenants, attrs = zip(*map(contexts.__getitem__, codes)) if codes else ((), (), ())
        items: list[Item] = list(map(tuple.__new__, repeat(Event),  # type: ignore[arg-type]
                                     zip(kinds, ids, times, models, tenants, attrs, outputs, labels, errors, units)))
        if subs:
            times = list(times)
            for i, sub in subs:
                items.insert(i, sub)
                times.insert(i, sub.ts)
        return items, times

    def _share(self, context: Context) -> Context:
        """The one copy of a context read back, interned as the decoder interns it."""
        model, tenant, attrs = context
        key = (model, tenant, *attrs.items())
        shared = self._shared.get(key)
        if shared is None:
            if len(self._shared) >= _SHARED_MAX:
                self._shared.clear()
            shared = self._shared[key] = (model if model is None else intern(model),
                                          tenant if tenant is None else intern(tenant), attribute_dict(attrs))
        return shared

    def _blocks(self, path: Path) -> Generator[tuple[list[Item], list[float]], None, None]:
        with open(path, "rb") as fh:
            read = fh.read
            while head := read(4):
                yield self._unpack(read(int.from_bytes(head, "little")))

    def _merged(self, paths: list[Path]) -> Iterator[list[Item]]:
        """The items of these runs, stably merged by event time (a tie goes to the earlier run), in
        slices: the longest stretch of one run that comes before every other run's next item is
        handed on at once, so runs that do not overlap (input already in event-time order) or meet
        only at their edges go through a block at a time."""
        runs = []
        for path in paths:
            blocks = self._blocks(path)
            self._stack.callback(blocks.close)  # its file is closed at the end, or on error
            runs.append(blocks)
        heads: list[tuple[list[Item], list[float]]] = []
        heap: list[tuple[float, int, int]] = []  # (next event time, run, position in its block)
        for r, blocks in enumerate(runs):
            head = next(blocks, None)
            heads.append(head or ([], []))
            if head:
                heap.append((head[1][0], r, 0))
        heapq.heapify(heap)
        pop, push = heapq.heappop, heapq.heappush
        while heap:
            _, r, pos = pop(heap)
            items, times = heads[r]
            if heap:  # what comes before the next item of any other run: ties go to the earlier run
                t, other, _ = heap[0]
                end = (bisect_right if r < other else bisect_left)(times, t, pos)
            else:
                end = len(times)
            yield items[pos:end] if pos or end < len(items) else items
            if end == len(times):
                head = next(runs[r], None)
                if head is None:
                    continue
                heads[r] = head
                items, times, end = head[0], head[1], 0
            push(heap, (times[end], r, end))

    def merged_slices(self) -> Iterator[list[Item]]:
        """Every item of every run, stably sorted by ``ts``, in slices. Runs are merged
        :data:`FAN_IN` at a time (longer runs first while there are more), so memory and open files
        stay bounded."""
        while len(self.paths) > FAN_IN:
            longer = []
            for i in range(0, len(self.paths), FAN_IN):
                group = self.paths[i:i + FAN_IN]
                if len(group) == 1:
                    longer.append(group[0])
                    continue
                try:
                    longer.append(self._write(chain.from_iterable(self._merged(group))))
                finally:
                    self._close_files()
                for p in group:
                    p.unlink()
            self.paths = longer
        return self._merged(self.paths)

    def merged(self) -> Iterator[Item]:
        """:meth:`merged_slices`, one item at a time."""
        return chain.from_iterable(self.merged_slices())

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


def _read(engine: Engine, files: list[Path], progress: bool,
          settle: Callable[[], None]) -> Generator[list[Item], None, None]:
    """Pass 1: the files' events decoded and screened, in file order (times far ahead are judged in
    file order, before any sorting), a batch at a time; invalid ones counted."""
    read = 0
    batches = engine.decoder.decode_batches(_lines(files, progress))
    try:
        for batch in batches:
            if InvalidEvent in set(map(type, batch)):
                engine.invalid.update(x.reason for x in batch if type(x) is InvalidEvent)
                batch = [x for x in batch if type(x) is not InvalidEvent]
            if read // SETTLE_EVERY != (read + len(batch)) // SETTLE_EVERY:
                settle()
            read += len(batch)
            yield engine.screen_many(batch)  # type: ignore[arg-type]  # (no InvalidEvent left)
        yield engine.screen_end()
    finally:
        batches.close()  # (its files too, when the caller stops early)


class _Feeder:
    """Pass 2: items in event-time order on to the engine, in parts that end where a release is due
    (every :data:`RELEASE_EVERY` items, at the last one's time: every later item is at least as
    late), whatever slices they come in; the alerts handed to ``emit``."""

    def __init__(self, engine: Engine, settle: Callable[[], None], emit: Callable[[list[Alert]], None],
                 bar: Any = None):
        self.engine, self.settle, self.emit, self.bar = engine, settle, emit, bar
        self.fed = 0

    def __call__(self, items: list[Item]) -> None:
        feed, release, start = self.engine.feed_events, self.engine.release, 0
        while start < len(items):
            take = RELEASE_EVERY - self.fed % RELEASE_EVERY
            part = items if start == 0 and len(items) <= take else items[start:start + take]
            start += len(part)
            self.fed += len(part)
            out = feed(part)
            if out:
                self.emit(out)
            if self.bar is not None:
                self.bar.update(len(part))
            if self.fed % RELEASE_EVERY == 0:
                self.emit(release(part[-1].ts))
                if self.fed % SETTLE_EVERY == 0:
                    self.settle()


def _in_order(engine: Engine, files: list[Path], progress: bool, settle: Callable[[], None]) -> list[Alert] | None:
    """Both passes at once, for input in event-time order up to a bounded lateness (files nearly
    always are): the alerts, or None as soon as an event comes too late, having fed ``engine``
    part of the input (the caller resets it and sorts through runs instead).

    The events read are sorted ``replay.in_order_window`` at a time and merged with as many kept
    back, the latest; all but those go on at once. That is exactly the order of a stable sort of
    the whole input as long as no event read later is earlier than one gone on (an event of the
    same time read later goes after it in both), and so whenever each event comes after at most
    that many events stamped later than it: those are the latest kept back when it is read. The
    first event that is too late ends the attempt. Memory is about twice the window in events, and
    nothing is written to disk. Alerts are handed out at the end, once the order is sure.
    """
    window = engine.cfg.replay.in_order_window
    alerts: list[Alert] = []
    feed = _Feeder(engine, settle, alerts.extend)
    kept: list[Item] = []  # the latest events read, sorted: they may still be preceded
    last = -math.inf  # the time of the last event gone on

    def hand_on(chunk: list[Item], final: bool) -> bool:
        nonlocal kept, last
        chunk.sort(key=_ts)  # stable: ties keep the order read
        if chunk and chunk[0].ts < last:
            return False
        if not kept or not chunk or kept[-1].ts <= chunk[0].ts:  # (ties: what was read first goes first)
            kept += chunk
        else:
            kept = sorted(kept + chunk, key=_ts)  # two sorted runs, merged stably
        cut = len(kept) if final else len(kept) - window
        if cut > 0:
            out = kept[:cut]
            del kept[:cut]
            last = out[-1].ts
            feed(out)
        return True

    buf: list[Item] = []
    reader = _read(engine, files, progress, settle)
    try:
        for screened in reader:
            buf += screened
            while len(buf) >= window:
                if not hand_on(buf[:window], False):
                    return None
                del buf[:window]
    finally:
        reader.close()
    if not hand_on(buf, True):
        return None
    return alerts


def _sorted(engine: Engine, files: list[Path], progress: bool, settle: Callable[[], None],
            emit: Callable[[list[Alert]], None]) -> None:
    """Pass 1, each full buffer sorted and spilled as a run; pass 2, the runs merged and fed, the
    alerts handed to ``emit`` as they come."""
    cfg = engine.cfg.replay
    with Runs(engine.cfg.resolve_path(cfg.spill_directory) if cfg.spill_directory else None,
              block_size(cfg.sort_buffer)) as runs:
        buf: list[Item] = []
        limit, count = cfg.sort_buffer, 0
        for screened in _read(engine, files, progress, settle):
            buf += screened
            while len(buf) >= limit:  # a run of the first `limit` (the order is a stable sort however cut)
                runs.spill(sorted(buf[:limit], key=_ts))  # stable: ties keep file order (and no name
                del buf[:limit]  # holds the run: its events are freed once written)
                count += limit
        count += len(buf)
        buf.sort(key=_ts)
        ordered: Iterable[list[Item]] = [buf]
        if runs.paths:  # pass 2: the runs merged (the last buffer too: memory is the engine's now)
            if buf:
                runs.spill(buf)
                buf.clear()
            ordered = runs.merged_slices()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=count, desc="process", unit="ev", unit_scale=True, file=sys.stderr, leave=False,
                       mininterval=0.25)
        feed = _Feeder(engine, settle, emit, bar)
        try:
            for items in ordered:
                feed(items)
        finally:
            if bar is not None:
                bar.close()


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
        with _terminated_like_interrupted(), _collector_tuned() as settle:
            found = None
            if engine.cfg.replay.in_order_window and engine.is_new:
                found = _in_order(engine, files, progress, settle)
                if found is None:  # an event too late for the buffer: what was fed is forgotten
                    engine.reset()
            if found is None:
                _sorted(engine, files, progress, settle, emit)
            else:
                emit(found)
    else:
        lines = _lines(files, progress)
        while chunk := list(islice(lines, RELEASE_EVERY)):
            emit(engine.feed_many(chunk))
    emit(engine.drain())
    return alerts
