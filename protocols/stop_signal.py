"""SIGTERM/SIGINT for the daemons' main threads, without the deadlock of `Event.set()` in a handler.

A Python signal handler runs in the main thread between two bytecodes, possibly inside `Event.wait()`
while that thread holds the Event's (non-reentrant) condition lock; a handler calling `Event.set()` then
waits on that lock forever and the process never stops. Seen: a telemetry agent that ignored SIGTERM in
the site-bridge test; 23 of 40 SIGTERMs to a `while not stop.wait(0)` loop. Here the handler only sets
a flag and writes a byte to a pipe (no lock of ours or of `threading`'s), and `wait` selects on it.
"""

from __future__ import annotations

import os
import select
import signal
from types import FrameType
from typing import Any, Iterable

__all__ = ["StopSignal"]


class StopSignal:
    """`install()` in the main thread, then `wait(timeout_s)` until a signal asks the process to stop."""

    def __init__(self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None  # the number of the signal that asked to stop
        self._previous: dict[int, Any] = {}  # what signal.signal returned: a handler, SIG_DFL/SIG_IGN or None
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)  # a handler must never block: one pending byte is enough

    def install(self) -> "StopSignal":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        try:
            os.write(self._write, b"\0")
        except OSError:  # the pipe is full (a byte already waits) or closed: the flag alone is enough
            pass

    def is_set(self) -> bool:
        return self.received is not None

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once a stop signal came; waits at most `timeout_s` (None: until one comes)."""
        if self.received is None:
            # select() returns early when the handler writes; after a handler that does not, PEP 475
            # restarts it with the time left, so the flag is checked again below in every case
            select.select([self._read], [], [], timeout_s)
        return self.received is not None

    def close(self) -> None:
        """Put back the handlers `install()` replaced and close the pipe."""
        for sig, previous in self._previous.items():
            if previous is not None:  # None: installed outside Python, nothing of ours to put back
                signal.signal(sig, previous)
        self._previous.clear()
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
