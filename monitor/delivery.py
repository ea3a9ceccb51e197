"""Reliable alert delivery: a bounded outbox drained by one background thread.

* The processing loop only :meth:`Dispatcher.submit`\\ s (never blocks); a slow or dead sink
  cannot stall consumption. Beyond ``outbox_max`` the oldest delivery is dropped and counted.
* 2xx: delivered. 429, 5xx and network errors: retried with exponential backoff and full jitter
  (``Retry-After`` respected), up to ``max_attempts``. Any other 4xx: not retried; logged with
  the response (secrets masked).
* The outbox, the last transition delivered per sink and alert, and the firing alerts are part
  of the daemon's checkpoint: after a restart nothing waiting is lost, and transitions the
  restart redoes are recognised and not sent twice. (A delivery completed in the seconds between
  the last checkpoint and a crash is sent again; PagerDuty, Opsgenie and Alertmanager deduplicate
  it by fingerprint, Slack and webhooks may show it twice.)
* Firing alerts are re-sent to Alertmanager every ``resend_seconds``, as it expects.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitor.sinks import AlertingLinks, AlertmanagerSink, DeliveryConfig, Request, Sink, enrich

log = logging.getLogger("lastmile.delivery")


@dataclass
class Delivery:
    sink: str
    record: dict[str, Any]
    attempt: int = 0
    due: float = 0.0


def http_send(req: Request, timeout: float) -> tuple[int, str, dict[str, str]]:
    """POST JSON; returns (status, body, headers). Network failures raise OSError."""
    data = json.dumps(req.body).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "lastmile", **req.headers}
    request = urllib.request.Request(req.url, data=data, headers=headers, method=req.method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read(4096).decode(errors="replace"), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(4096).decode(errors="replace"), dict(err.headers or {})


class Dispatcher:
    def __init__(self, sinks: list[Sink], cfg: DeliveryConfig, links: AlertingLinks,
                 send: Callable[[Request, float], tuple[int, str, dict[str, str]]] = http_send,
                 clock: Callable[[], float] = time.monotonic, seed: int | None = None):
        self.sinks = {s.name: s for s in sinks}
        self.cfg = cfg
        self.links = links
        self._send = send
        self._clock = clock
        self._rng = random.Random(seed)
        self._queue: deque[Delivery] = deque()
        self._delivered: dict[tuple[str, str], tuple[str, str]] = {}  # (sink, fingerprint) → (state, ts)
        self._firing: dict[str, dict[str, Any]] = {}  # fingerprint → enriched firing record
        self._last_resend = clock()
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.stats: Counter[tuple[str, str]] = Counter()  # (sink, result)

    # ---- the processing loop's side ----------------------------------------------------------
    def submit(self, alert: dict[str, Any]) -> None:
        record = enrich(alert, self.links)
        with self._cond:
            if record["kind"] == "submission":
                pass  # a confirmation: one notification, never re-sent or resolved
            elif record["state"] == "firing":
                self._firing[record["fingerprint"]] = record
            else:
                started = self._firing.pop(record["fingerprint"], None)
                if started:
                    record["started"] = started["ts"]
            for sink in self.sinks.values():
                if not sink.wants(record):
                    continue
                if self._delivered.get((sink.name, record["fingerprint"])) == (record["state"], record["ts"]):
                    continue  # redone after a restart: it already went out
                self._enqueue(Delivery(sink.name, record, 0, self._clock()))
            self._cond.notify()

    def _enqueue(self, delivery: Delivery) -> None:
        if len(self._queue) >= self.cfg.outbox_max:
            dropped = self._queue.popleft()
            self.stats[(dropped.sink, "dropped")] += 1  # caller holds the lock
            log.error("outbox full (%d): dropped an alert for %s", self.cfg.outbox_max, dropped.sink)
        self._queue.append(delivery)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    # ---- the delivery thread -----------------------------------------------------------------
    def start(self) -> Dispatcher:
        self._thread = threading.Thread(target=self._run, name="lastmile-delivery", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Try to deliver what is due within ``timeout``; what remains stays in the outbox state."""
        deadline = self._clock() + timeout
        while self.pending and self._clock() < deadline and self._thread and self._thread.is_alive():
            time.sleep(0.05)
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread:
            self._thread.join(timeout=max(deadline - self._clock(), 0.5))

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stop:
                    return
                self._resend_firing()
                now = self._clock()
                due = next((d for d in self._queue if d.due <= now), None)
                if due is None:
                    wait = min((d.due for d in self._queue), default=now + 1.0) - now
                    self._cond.wait(timeout=min(max(wait, 0.01), 1.0))
                    continue
                self._queue.remove(due)
            self.deliver(due)

    def _resend_firing(self) -> None:
        now = self._clock()
        if now - self._last_resend < self.cfg.resend_seconds:
            return
        self._last_resend = now
        for record in self._firing.values():
            for sink in self.sinks.values():
                if isinstance(sink, AlertmanagerSink) and sink.wants(record):
                    self._enqueue(Delivery(sink.name, record, 0, now))

    def deliver(self, d: Delivery) -> None:
        """One attempt; reschedules or gives up according to the response."""
        sink = self.sinks.get(d.sink)
        if sink is None:
            return
        with self._cond:
            done = self._delivered.get((d.sink, d.record["fingerprint"])) == (d.record["state"], d.record["ts"])
        if done and d.attempt == 0 and not (isinstance(sink, AlertmanagerSink) and d.record["state"] == "firing"):
            return  # restored from a checkpoint but delivered since
        req = sink.request(d.record)
        try:
            status, body, headers = self._send(req, sink.cfg.timeout_seconds)
        except OSError as exc:
            status, body, headers = 0, str(exc), {}
        if 200 <= status < 300:
            with self._cond:
                self.stats[(d.sink, "delivered")] += 1
                self._delivered[(d.sink, d.record["fingerprint"])] = (d.record["state"], d.record["ts"])
            return
        if status == 0 or status == 429 or status >= 500:
            d.attempt += 1
            if d.attempt >= self.cfg.max_attempts:
                self._count(d.sink, "gave_up")
                log.error("%s: giving up after %d attempts (%s)", d.sink, d.attempt, sink.mask(body)[:300])
                return
            self._count(d.sink, "retried")
            delay = self._backoff(d.attempt, headers.get("Retry-After") or headers.get("retry-after"))
            d.due = self._clock() + delay
            with self._cond:
                self._queue.append(d)
            log.warning("%s: %s, retry %d in %.1fs", d.sink, status or sink.mask(body)[:200], d.attempt, delay)
            return
        self._count(d.sink, "rejected")
        log.error("%s rejected an alert with %d (not retried): %s", d.sink, status, sink.mask(body)[:500])

    def _count(self, sink: str, result: str) -> None:
        with self._cond:
            self.stats[(sink, result)] += 1

    def stats_snapshot(self) -> list[tuple[str, str, int]]:
        """(sink, result, count), copied under the lock: the delivery thread keeps counting."""
        with self._cond:
            return [(sink, result, count) for (sink, result), count in sorted(self.stats.items())]

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        cap = min(self.cfg.backoff_max_seconds, self.cfg.backoff_initial_seconds * 2 ** (attempt - 1))
        delay = self._rng.uniform(0, cap)  # full jitter: retries from many instances spread out
        if retry_after and retry_after.strip().replace(".", "", 1).isdigit():  # seconds; HTTP dates are ignored
            delay = max(delay, float(retry_after))
        return delay

    # ---- checkpointing -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self._cond:
            return {"pending": [{"sink": d.sink, "record": d.record, "attempt": d.attempt} for d in self._queue],
                    "delivered": [[s, f, st, ts] for (s, f), (st, ts) in self._delivered.items()],
                    "firing": list(self._firing.values())}

    def restore(self, state: dict[str, Any] | None) -> None:
        """Back to a checkpoint's outbox. What this process has already delivered it still knows,
        so transitions the rollback makes it redo are not sent again."""
        with self._cond:
            self._queue.clear()
            self._firing.clear()
            if not state:
                return
            now = self._clock()
            for d in state["pending"]:
                if d["sink"] in self.sinks:
                    self._queue.append(Delivery(d["sink"], d["record"], d["attempt"], now))
            for s, f, st, ts in state["delivered"]:
                self._delivered.setdefault((s, f), (st, ts))
            self._firing = {r["fingerprint"]: r for r in state["firing"]}
