"""A device's download outlives a hub restart: connections refused are retried for max_unreachable_s.

Real HTTP on loopback: nothing listens on the port at first (the hub was SIGKILLed), then a server
starts there (the hub came back). Before this, 5 attempts over ~3 s failed the device's update and
the rollout counted a healthy release as failed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tandem.edge_agent.ota.download import DownloadConfig, Downloader
from tandem.edge_agent.ota.errors import DownloadError


class _Manifest(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"name": "m"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_download_waits_for_a_restarting_hub_and_gives_up_after_max_unreachable_s():
    port = _free_port()
    url = f"http://127.0.0.1:{port}/manifest"
    fast = DownloadConfig(attempts=2, backoff_s=0.05, max_unreachable_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"refused connections for \d+ s \(max_unreachable_s=0.5"):
        Downloader(fast).fetch_json(url)
    assert time.monotonic() - t0 >= 0.5  # it kept trying past its 2 attempts

    servers: list[ThreadingHTTPServer] = []

    def hub_comes_back() -> None:
        time.sleep(1.5)  # longer than attempts x backoff (0.15 s) would have waited
        server = ThreadingHTTPServer(("127.0.0.1", port), _Manifest)
        servers.append(server)
        server.serve_forever()

    threading.Thread(target=hub_comes_back, daemon=True).start()
    try:
        patient = DownloadConfig(attempts=2, backoff_s=0.05, max_unreachable_s=30)
        assert Downloader(patient).fetch_json(url) == {"name": "m"}
    finally:
        for server in servers:
            server.shutdown()
