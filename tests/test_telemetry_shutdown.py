"""A telemetry agent stops within its documented bound whatever the broker does, and keeps what was
not acknowledged (issue 19: an agent of the site-bridge test did not exit within 30 s of SIGTERM).

The broker here is a TCP listener that accepts and never answers: the agent's TLS handshake hangs
(a half-open link, a broker stuck before its TLS layer). paho's loop_stop() waited for that connect
attempt to give up (connect_timeout_s, 60 s here); the publisher now gives it LOOP_STOP_S.
"""

from __future__ import annotations

import socket
import threading
import time

from tandem.cloud_hub.pki import Pki
from tandem.edge_agent.telemetry import ModelInfo, PublisherConfig, TelemetryService
from tandem.edge_agent.telemetry.outbox import Outbox
from tandem.edge_agent.telemetry.service import OUTBOX_FILENAME, STOP_SLACK_S

REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
CONNECT_TIMEOUT_S = 60.0  # what the old stop waited for
DRAIN_S = 0.5


class SilentListener:
    """Accepts TCP connections and never sends a byte (closes them on `close()`)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_stop_during_a_hung_tls_handshake_returns_in_bound_and_keeps_the_window(tmp_path):
    files = Pki.init(tmp_path / "pki").issue_device("cam-1")
    broker = SilentListener()
    url = f"mqtts://127.0.0.1:{broker.port}"
    service = TelemetryService(
        url,
        "cam-1",
        ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32"),
        tmp_path / "agent",
        window_s=60.0,
        publisher=PublisherConfig(mqtt_url=url, tls=files, connect_timeout_s=CONNECT_TIMEOUT_S),
    )
    try:
        service.start()
        deadline = time.monotonic() + 10
        while not broker.accepted and time.monotonic() < deadline:  # paho's thread is now in the handshake
            time.sleep(0.05)
        assert broker.accepted, "the publisher never connected to the listener"
        service.record("edge", 3.0, confidence=0.9, label=1)
        t0 = time.monotonic()
        service.stop(drain_timeout_s=DRAIN_S)
        took = time.monotonic() - t0
        # the bound plus room for a loaded CI machine; the old stop took about CONNECT_TIMEOUT_S
        assert took < DRAIN_S + STOP_SLACK_S + 5.0, f"stop took {took:.1f} s with a hung handshake"
    finally:
        broker.close()  # the handshake fails now, and paho's left-behind thread ends
    outbox = Outbox(tmp_path / "agent" / OUTBOX_FILENAME)
    try:
        assert outbox.last_sequence == 1 and len(outbox) == 1, "the flushed window must wait in the outbox"
    finally:
        outbox.close()
