"""The daemon's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz``, ``/v1/slices``, ``/v1/alerts``.

Read-only and GET-only: every response is rendered from the last snapshot the processing loop
published, so a request never touches live state or waits for the loop.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.exposition import SliceCollector


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


class Server:
    def __init__(self, collector: SliceCollector, health: Health, host: str, port: int,
                 registry: CollectorRegistry | None = None):
        self.collector = collector
        self.health = health
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

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        return

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        app = self.app
        if path == "/metrics":
            self._send(200, generate_latest(app.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, detail = app.health.live()
            self._json(200 if ok else 503, {"status": "ok" if ok else "stalled", "detail": detail})
        elif path == "/readyz":
            ok, missing = app.health.ready()
            self._json(200 if ok else 503, {"status": "ready" if ok else "not ready", "missing": missing})
        elif path in ("/v1/slices", "/v1/alerts"):
            snap = app.collector.snapshot()
            if snap is None:
                self._json(503, {"error": "no snapshot yet: state is still being restored"})
            elif path == "/v1/slices":
                self._json(200, snap)
            else:
                self._json(200, {"alerts": snap["alerts"]})
        else:
            self._json(404, {"error": f"no such endpoint {path}",
                             "endpoints": ["/metrics", "/healthz", "/readyz", "/v1/slices", "/v1/alerts"]})

    def _method_not_allowed(self) -> None:
        self._json(405, {"error": "read-only API: GET only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815
