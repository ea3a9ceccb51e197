"""The daemon's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz``, ``/v1/slices``, ``/v1/alerts``,
``/v1/submissions``.

Every GET is rendered from the last snapshot the processing loop published, so a request never
touches live state or waits for the loop. The one write, ``POST /v1/submissions`` (bias
bounties, when an :class:`Intake` is configured), authenticates the submitter, bounds the body,
rate-limits, validates the submission (400 with the JSON path of the problem) and appends it as
an event for the loop to process like any other; nothing else changes state.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.auth import RateLimiter, TokenStore
from monitor.exposition import SliceCollector
from monitor.ranking import MAX_TOP, top_slices
from monitor.submissions import Submission, SubmissionError, parse_submission


@dataclass
class Health:
    """What liveness and readiness are judged on; the loop updates it, the server reads it."""

    liveness_timeout: float = 60.0
    heartbeat: float = field(default_factory=time.monotonic)  # the loop turned at this monotonic time
    assigned: bool = False
    restored: bool = False
    broker_ok: bool = False
    stopping: bool = False

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self.heartbeat
        return age < self.liveness_timeout, f"loop last turned {age:.1f}s ago"

    def ready(self) -> tuple[bool, list[str]]:
        missing = [name for name, ok in (("partitions assigned", self.assigned), ("state restored", self.restored),
                                         ("broker reachable", self.broker_ok), ("not stopping", not self.stopping))
                   if not ok]
        return not missing, missing


@dataclass
class Intake:
    """What ``POST /v1/submissions`` needs: who may submit, the limits, and where an accepted
    submission goes (``append(event_bytes)``: the daemon's submissions topic)."""

    tokens: TokenStore
    limiter: RateLimiter
    append: Any  # Callable[[bytes], None]
    dimensions: tuple[str, ...]
    metrics: tuple[str, ...]
    models: frozenset[str] | None = None
    max_body: int = 16384
    max_active: int = 20
    max_pending: int = 200  # over all submitters: what the engine tests at once stays affordable
    clock: Any = time.time  # the submission's time is the server's: a body cannot backdate its test
    #: seconds after acceptance its test starts: by then it is on the topic, so the daemon reads it
    #: before any outcome it counts (see monitor.engine: submissions register in event-time order)
    start_delay: float = 0.0
    cap: float = 1.0  # metrics.error_cap: no claimed gap can reach it
    #: accepted here, not yet in a published snapshot: they count against max_active at once
    accepted: dict[str, set[str]] = field(default_factory=dict)
    #: submission id → (submitter, hypothesis) of those accepted here (processed ones are in the snapshot)
    claimed: dict[str, tuple[str, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # request threads share the limits

    def load(self, submitter: str, snapshot: dict[str, Any]) -> tuple[int, int]:
        """Submissions still pending (including those accepted, not processed yet): the
        submitter's, and everyone's."""
        records = snapshot.get("submissions", [])
        seen = {sid for r in records for sid in r["submissions"]}
        for ids in self.accepted.values():
            ids -= seen
        mine = self.accepted.setdefault(submitter, set())
        pending = [r for r in records if r["status"] == "pending"]
        own = len(mine) + sum(1 for r in pending if submitter in r["submitters"])
        return own, len(pending) + sum(len(ids) for ids in self.accepted.values())

    def conflict(self, submitter: str, sub: Submission, snapshot: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """Why this submission cannot be taken as new, if so: its id is another submitter's (409);
        the submitter used it for another claim (409); it was received already (200, nothing
        changes); or its hypothesis was decided already (409: joining it would earn no credit)."""
        records = snapshot.get("submissions", [])
        owners = {j["id"]: (j["submitter"], r["hypothesis"]) for r in records for j in r.get("joined", [])}
        for known in owners.keys() & self.claimed.keys():  # processed: the snapshot has them now
            del self.claimed[known]
        owner = owners.get(sub.id) or self.claimed.get(sub.id)
        if owner is not None:
            if owner[0] != submitter:
                return 409, {"error": f"submission id {sub.id!r} is taken: choose another", "path": "$.id"}
            if owner[1] != sub.hypothesis:
                return 409, {"error": f"you used submission id {sub.id!r} for another claim: choose another id",
                             "path": "$.id"}
            found = [r for r in records if r.get("hypothesis") == sub.hypothesis]
            return 200, {"id": sub.id, "hypothesis": sub.hypothesis, "status": "received already",
                         "verdict": found[0] if found else None}
        decided = [r for r in records if r.get("hypothesis") == sub.hypothesis and r["status"] != "pending"]
        if decided:
            return 409, {"error": f"this hypothesis was decided already ({decided[0]['status']})",
                         "verdict": decided[0]}
        return None


class Server:
    def __init__(self, collector: SliceCollector, health: Health, host: str, port: int,
                 registry: CollectorRegistry | None = None, intake: Intake | None = None):
        self.collector = collector
        self.health = health
        self.intake = intake
        self.registry = registry or CollectorRegistry()
        if registry is None:
            self.registry.register(collector)
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="lastmile-http", daemon=True)

    def start(self) -> Server:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    app: Server
    server_version = "lastmile"
    timeout = 10  # seconds a client may take to send its request: a slow one does not hold a thread

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        return

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path, _, query = self.path.partition("?")
        app = self.app
        if path == "/metrics":
            self._send(200, generate_latest(app.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, detail = app.health.live()
            self._json(200 if ok else 503, {"status": "ok" if ok else "stalled", "detail": detail})
        elif path == "/readyz":
            ok, missing = app.health.ready()
            self._json(200 if ok else 503, {"status": "ready" if ok else "not ready", "missing": missing})
        elif path in ("/v1/slices", "/v1/alerts", "/v1/submissions") or path.startswith("/v1/submissions/"):
            snap = app.collector.snapshot()
            if snap is None:
                self._json(503, {"error": "no snapshot yet: state is still being restored"})
            elif path == "/v1/slices" and query:
                self._top(snap, query)
            elif path == "/v1/slices":
                self._json(200, snap)
            elif path == "/v1/alerts":
                self._json(200, {"alerts": snap["alerts"]})
            elif path == "/v1/submissions":
                self._json(200, {"submissions": snap.get("submissions", [])})
            else:
                sid = path[len("/v1/submissions/"):]
                found = [r for r in snap.get("submissions", []) if sid in r["submissions"]]
                self._json(200, found[0]) if found else self._json(404, {"error": "no such submission (yet: "
                                                                          "accepted ones appear once processed)"})
        else:
            self._json(404, {"error": f"no such endpoint {path}",
                             "endpoints": ["/metrics", "/healthz", "/readyz", "/v1/slices", "/v1/alerts",
                                           "/v1/submissions"]})

    def _top(self, snap: dict[str, Any], text: str) -> None:
        """``/v1/slices?top=K[&metric=M]``: the K worst slices by SliceLine score (monitor.ranking)."""
        query = parse_qs(text, keep_blank_values=True)
        unknown = sorted(set(query) - {"top", "metric"})
        if unknown:
            self._json(400, {"error": f"unknown query parameter {unknown[0][:40]!r} (known: top, metric)",
                             "path": f"?{unknown[0][:40]}"})
            return
        top = query.get("top", ["10"])[-1]
        if not top.isdigit() or not 1 <= int(top) <= MAX_TOP:
            self._json(400, {"error": f"top must be an integer from 1 to {MAX_TOP}", "path": "?top"})
            return
        metrics = query.get("metric")
        self._json(200, {"top": top_slices(snap, int(top), metrics=metrics),
                         "score": "SliceLine: 0.95·(rate/model rate − 1) − 0.05·(model n/n − 1); shown, never "
                                  "alerted on"})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] != "/v1/submissions" or self.app.intake is None:
            self._method_not_allowed()
            return
        intake = self.app.intake
        submitter = intake.tokens.authenticate(self.headers.get("Authorization"))
        if submitter is None:
            self.close_connection = True  # the body is not read
            self._json(401, {"error": "a bearer token is needed: Authorization: Bearer <token>"},
                       {"WWW-Authenticate": 'Bearer realm="lastmile"', "Connection": "close"})
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            self._json(411, {"error": "Content-Length is required"})
            return
        if int(length) > intake.max_body:
            self.close_connection = True  # the body is not read
            self._json(413, {"error": f"the body is longer than {intake.max_body} bytes"})
            return
        with intake.lock:
            allowed, wait = intake.limiter.allow(submitter.name)
        if not allowed:
            self.close_connection = True
            self._json(429, {"error": "too many submissions: slow down", "retry_after_seconds": round(wait, 1)},
                       {"Retry-After": str(max(1, int(wait + 0.999)))})
            return
        raw = self.rfile.read(int(length))
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self._json(400, {"error": "the body is not JSON", "path": "$"})
            return
        if isinstance(obj, dict):
            obj = {**obj, "ts": intake.clock() + intake.start_delay, "submitter": obj.get("submitter", submitter.name)}
        try:
            sub = parse_submission(obj, dimensions=intake.dimensions, metrics=intake.metrics, models=intake.models,
                                   cap=intake.cap,
                                   submitter=submitter.name)
        except SubmissionError as exc:
            self._json(400, {"error": exc.message, "path": exc.path})
            return
        except RecursionError:
            self._json(400, {"error": "nested too deeply", "path": "$"})
            return
        if not submitter.allowed(sub.model):
            self._json(403, {"error": f"this token may not submit for model {sub.model!r}", "path": "$.model"})
            return
        with intake.lock:
            snapshot = self.app.collector.snapshot() or {}
            conflict = intake.conflict(submitter.name, sub, snapshot)
            active, everyone = intake.load(submitter.name, snapshot)
            full = everyone >= intake.max_pending
            if conflict is None and active < intake.max_active and not full:
                intake.accepted[submitter.name].add(sub.id)
                intake.claimed[sub.id] = (submitter.name, sub.hypothesis)
        if conflict is not None:
            self._json(*conflict)
            return
        if full and active < intake.max_active:
            self._json(429, {"error": f"{everyone} submissions are being tested (at most {intake.max_pending}): "
                                      "try again once some have verdicts"}, {"Retry-After": "600"})
            return
        if active >= intake.max_active:
            self._json(429, {"error": f"{active} of your submissions are still pending (at most {intake.max_active})"})
            return
        event = {"type": "submission", **sub.to_dict()}
        event["budget"] = {"max_outcomes": sub.max_outcomes, "deadline": sub.deadline - sub.ts}
        del event["hypothesis"]
        try:
            intake.append(json.dumps(event).encode())
        except Exception as exc:  # noqa: BLE001 - the broker's error, whatever it is, is a 503
            with intake.lock:
                intake.accepted[submitter.name].discard(sub.id)
                intake.claimed.pop(sub.id, None)
            self._json(503, {"error": f"the submission could not be stored: {type(exc).__name__}; try again"})
            return
        self._json(202, {"id": sub.id, "hypothesis": sub.hypothesis, "status": "accepted",
                         "location": f"/v1/submissions/{sub.id}"})

    def _method_not_allowed(self) -> None:
        self._json(405, {"error": "read-only API: GET only (and POST /v1/submissions when submissions are on)"})

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815
