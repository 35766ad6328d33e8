"""The local API's post-reply spin (edge_agent/server.py): it must never cost a caller its answer.

The spin polls for the next request after each reply. These tests give it a long spin
(200 ms) so that any way it could block shows up as a whole spin per request, measured
against the same requests through a server that does not spin: holding the GIL from a client in the same process, delaying an answer that
comes back through the loop, or losing a request that arrives while it polls.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.errors import ConfigError
from tandem.edge_agent.server import ZmqServer

LONG_SPIN_US = 200_000  # 200 ms: a request that waited for the spin to end would take at least this long
REQUESTS = 20
# Each bound compares with the same round trips through a server that does not spin, measured in
# the same test, and allows half a spin on top: a loaded 2-core machine slows both alike, while a
# spin that blocked would add a whole spin to most requests.
ALLOWED_S = LONG_SPIN_US / 1e6 / 2


def _median(seconds: list[float]) -> float:
    return sorted(seconds)[len(seconds) // 2]


def _echo(frames):
    return [bytes(f) for f in frames]  # bytes (the header) or zmq.Frame (tensors)


def _round_trips(endpoint: str, count: int) -> list[float]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(endpoint)
    try:
        seconds = []
        for i in range(count):
            t0 = time.perf_counter()
            sock.send_multipart([f"req-{i}".encode()])
            assert sock.recv_multipart() == [f"req-{i}".encode()]
            seconds.append(time.perf_counter() - t0)
        return seconds
    finally:
        sock.close(0)


def test_a_client_in_the_same_process_is_not_held_up_by_the_spin(tmp_path: Path) -> None:
    # The spin polls with the GIL released; if it held the GIL, this thread could not read
    # its reply until the spin ended (or the interpreter's switch interval forced a hand-over,
    # hence the long interval here), and every round trip would take ~50 ms.
    medians = {}
    for spin_us in (0, LONG_SPIN_US):
        server = ZmqServer(f"ipc://{tmp_path}/spin-{spin_us}.sock", _echo, spin_us=spin_us).start()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(LONG_SPIN_US / 1e6)
        try:
            medians[spin_us] = _median(_round_trips(server.endpoint, REQUESTS))
        finally:
            sys.setswitchinterval(interval)
            server.stop()
    assert medians[LONG_SPIN_US] < medians[0] + ALLOWED_S, medians


def test_requests_that_arrive_during_the_spin_are_all_answered(tmp_path: Path) -> None:
    # Two clients take turns, so requests keep landing while the server is mid-spin.
    server = ZmqServer(f"ipc://{tmp_path}/spin.sock", _echo, spin_us=LONG_SPIN_US).start()
    results: list[list[float]] = []
    try:
        threads = [
            threading.Thread(target=lambda: results.append(_round_trips(server.endpoint, REQUESTS))) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        server.stop()
    assert [len(r) for r in results] == [REQUESTS, REQUESTS]


def test_no_spin_while_an_answer_waits_on_the_loop(tmp_path: Path) -> None:
    # A handler that answers later (as the worker thread or the hub do) resolves through the
    # loop; a spin at that moment would delay the answer by the whole spin.
    def later(frames):
        async def answer():
            await asyncio.sleep(0.001)
            return _echo(frames)

        return answer()

    medians = {}
    for spin_us in (0, LONG_SPIN_US):
        server = ZmqServer(f"ipc://{tmp_path}/spin-{spin_us}.sock", later, spin_us=spin_us).start()
        try:
            medians[spin_us] = _median(_round_trips(server.endpoint, 10))
        finally:
            server.stop()
    assert medians[LONG_SPIN_US] < medians[0] + ALLOWED_S, medians


def test_spin_us_is_configurable_and_checked(tmp_path: Path) -> None:
    cfg = AgentConfig.from_mapping({"model": {"dir": str(tmp_path)}, "server": {"spin_us": 0}}, env={})
    assert cfg.server.spin_us == 0
    cfg = AgentConfig.from_mapping({"model": {"dir": str(tmp_path)}}, env={"TANDEM_AGENT_SERVER_SPIN_US": "120"})
    assert cfg.server.spin_us == 120
    with pytest.raises(ConfigError, match="server.spin_us"):
        AgentConfig.from_mapping({"model": {"dir": str(tmp_path)}, "server": {"spin_us": -1}}, env={}).validate()


def _paced_cpu_s(endpoint: str, count: int, gap_s: float) -> float:
    """CPU seconds this process (client and server) spends on `count` requests `gap_s` apart."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(endpoint)
    try:
        cpu0 = time.process_time()
        for i in range(count):
            sock.send(b"%d" % i)
            sock.recv()
            time.sleep(gap_s)
        return time.process_time() - cpu0
    finally:
        sock.close(0)


def test_the_spin_stops_for_a_client_that_paces_itself_and_resumes_for_one_that_does_not(tmp_path: Path) -> None:
    from tandem.edge_agent.server import SPIN_MIN_HIT_RATE

    spin_us, gap_s, count = 20_000, 0.03, 30  # a 20 ms spin; requests every 30 ms (a camera at ~33 fps)
    baseline = ZmqServer(f"ipc://{tmp_path}/nospin.sock", _echo, spin_us=0).start()
    try:
        baseline_cpu_s = _paced_cpu_s(baseline.endpoint, count, gap_s)  # the same run with no spin at all
    finally:
        baseline.stop()
    server = ZmqServer(f"ipc://{tmp_path}/spin.sock", _echo, spin_us=spin_us).start()
    waits: list[float] = []  # wall seconds of each wait for a next request: a spin lasts spin_us
    inner = server._await_next

    def timed(sock: zmq.Socket) -> bool:
        t0 = time.perf_counter()
        try:
            return inner(sock)
        finally:
            waits.append(time.perf_counter() - t0)

    server._await_next = timed  # type: ignore[method-assign]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    sock.connect(server.endpoint)
    try:
        paced_cpu_s = _paced_cpu_s(server.endpoint, count, gap_s)
        assert server.spin_hit_rate < SPIN_MIN_HIT_RATE
        # by the last ten paced requests the spin has stopped (a loaded machine can stretch a
        # wait that does not spin, so two of ten may look long; a spin that never stops makes all ten)
        assert sum(w >= spin_us / 1e6 / 2 for w in waits[-10:]) <= 2, waits
        # a spin after every reply would have burnt count x 20 ms = 0.6 s of CPU more than no spin
        # (on an idle machine; under load the spinning thread gets less, so this bound only loosens)
        assert paced_cpu_s < baseline_cpu_s + 0.5 * count * spin_us / 1e6, (paced_cpu_s, baseline_cpu_s)
        for i in range(count):  # back to back: each request comes well within the spin
            sock.send(b"%d" % i)
            sock.recv()
        assert server.spin_hit_rate >= SPIN_MIN_HIT_RATE
    finally:
        sock.close(0)
        server.stop()
