"""SIGTERM always stops a daemon's main loop: protocols.stop_signal.StopSignal, in real processes.

The old loop (`signal.signal(SIGTERM, lambda *_: stop.set())` around `while not stop.wait(...)`) could
deadlock: the handler's Event.set() waits on the condition lock that the interrupted Event.wait() holds.
That is how one telemetry agent of the site-bridge test never stopped (issue 19).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tandem.protocols.stop_signal import StopSignal
from telemetry_fixtures import python_env

# A tight wait loop spends most of its time inside wait(), where the old handler deadlocked
# (23 of 40 processes with threading.Event); each child must print "stopped" and exit 0.
CHILD = """
import sys
from tandem.protocols.stop_signal import StopSignal
stop = StopSignal().install()
print("ready", flush=True)
while not stop.wait(0):
    pass
print("stopped", stop.received, flush=True)
"""
CHILDREN = 8


def test_sigterm_during_a_tight_wait_loop_always_stops_the_process():
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, env=python_env())
        for _ in range(CHILDREN)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(0.1)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        hung = []
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung.append(p.pid)
        assert not hung, f"{len(hung)} of {CHILDREN} processes ignored SIGTERM (deadlocked in the handler)"
        for p in procs:
            assert p.stdout is not None
            assert p.returncode == 0 and p.stdout.read().split() == [b"stopped", str(int(signal.SIGTERM)).encode()]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)


def test_wait_times_out_without_a_signal_and_close_restores_the_handler():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopSignal([signal.SIGUSR1]).install()
    try:
        t0 = time.monotonic()
        assert stop.wait(0.2) is False and time.monotonic() - t0 >= 0.15
        signal.raise_signal(signal.SIGUSR1)
        assert stop.wait(5) is True and stop.received == signal.SIGUSR1 and stop.is_set()
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGUSR1) is before
