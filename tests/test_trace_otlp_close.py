"""Closing the OTLP exporter is bounded: an unreachable collector must not hold an agent's or a hub's
SIGTERM for OpenTelemetry's 30 s shutdown (issue 19: every wait at stop is bounded)."""

from __future__ import annotations

import socket
import threading
import time

from tandem.protocols.otlp import FinishedSpan, OtlpExporter, TracingConfig
from tandem.protocols.tracing import new_trace

CLOSE_S = 1.0


def test_close_gives_up_on_a_collector_that_never_answers(caplog):
    listener = socket.socket()  # accepts the TCP connection, never speaks HTTP/2: the export hangs to its deadline
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    exporter = OtlpExporter(TracingConfig(otlp_endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}"), "test")
    try:
        now = time.time_ns()
        exporter.export(FinishedSpan("infer", new_trace(), None, "server", now - 1_000_000, now))
        t0 = time.monotonic()
        exporter.close(timeout_s=CLOSE_S)
        took = time.monotonic() - t0
        # the exporter's own deadline is 10 s and the processor's 30 s: the old close took about 10 s here
        assert took < CLOSE_S + 3.0, f"close took {took:.1f} s"
        assert "spans not sent" in caplog.text
    finally:
        listener.close()
        for conn in held:
            conn.close()
