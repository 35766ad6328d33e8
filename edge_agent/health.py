"""A small local HTTP server: /healthz for supervisors and /metrics for Prometheus.

http.server on a thread: a scrape every few seconds needs nothing heavier.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from tandem.protocols.prom import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, wants_openmetrics

log = logging.getLogger(__name__)

HealthFn = Callable[[], tuple[bool, dict]]
MetricsFn = Callable[..., str]  # (openmetrics: bool = False) -> exposition text


class HealthServer:
    """Serve `health()` at /healthz (200 or 503, JSON) and `metrics()` at /metrics."""

    def __init__(self, health: HealthFn, metrics: MetricsFn, host: str = "127.0.0.1", port: int = 0) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/healthz":
                        ok, body = outer._health()
                        self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
                    elif path == "/metrics":
                        if wants_openmetrics(self.headers.get("Accept")):
                            self._send(200, OPENMETRICS_CONTENT_TYPE, outer._metrics(openmetrics=True).encode())
                        else:
                            self._send(200, TEXT_CONTENT_TYPE, outer._metrics().encode())
                    else:
                        self._send(404, "text/plain", b"not found: try /healthz or /metrics\n")
                except Exception as exc:  # report, never kill the server thread
                    log.exception("health endpoint failed path=%s", path)
                    self._send(500, "text/plain", f"internal error: {exc}\n".encode())

            def _send(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("http " + fmt, *args)

        self._health = health
        self._metrics = metrics
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        bound, self.port = self._server.server_address[:2]
        self.host = bound.decode() if isinstance(bound, (bytes, bytearray)) else bound  # AF_INET: already a str
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="agent-health", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
