"""Replay: the engine over JSONL files (plain or .gz), for audits and outside evaluators.

With ``replay.order_by_event_time`` (the default) all events are decoded first and processed
in event-time order (ties keep file order), so the result does not depend on how the files
were split or concatenated; otherwise lines are streamed in file order. Either way, event
times far ahead of the stream are judged in file order (:mod:`monitor.future`).
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator

from monitor.alerts import Alert
from monitor.engine import Engine
from monitor.events import Event, InvalidEvent
from monitor.submissions import Submission


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
        decoded: list[Event | Submission] = []
        decode, screen = engine.decoder.decode, engine.screen
        for line in _lines(files, progress):
            try:
                ev = decode(line)
            except InvalidEvent as exc:
                engine.invalid[exc.reason] += 1
                continue
            decoded += screen(ev)  # times far ahead are judged in file order, before sorting
        decoded += engine.screen_end()
        decoded.sort(key=lambda ev: ev.ts)  # stable: ties keep file order
        ordered: Iterable[Event | Submission] = decoded
        if progress:
            from tqdm import tqdm

            ordered = tqdm(decoded, desc="process", unit="ev", unit_scale=True, file=sys.stderr, leave=False,
                           mininterval=0.25)
        for n, item in enumerate(ordered, 1):
            emit(engine.feed_event(item))
            if n % 4096 == 0:
                emit(engine.release(item.ts))  # every later event, and so outcome, is at least this late
    else:
        for line in _lines(files, progress):
            emit(engine.feed(line))
    emit(engine.drain())
    return alerts
