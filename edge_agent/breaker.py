"""A circuit breaker, so a dead hub costs nothing per request.

Closed: calls go through; `failure_threshold` consecutive failures open it. Open:
calls are refused without touching the network until `cool_down_s` has passed.
Half-open: exactly one probe goes through; its success closes the breaker, its
failure opens it for another cool-down. Pure and clock-injected, so the same core
runs in the agent, in tests and in the simulator; thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open probe."""

    def __init__(
        self, failure_threshold: int = 5, cool_down_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if cool_down_s < 0:
            raise ValueError(f"cool_down_s must be >= 0, got {cool_down_s}")
        self.failure_threshold = failure_threshold
        self.cool_down_s = cool_down_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self._probe_at = 0.0
        self.opened_count = 0  # times the breaker tripped, for metrics

    @property
    def state(self) -> str:
        """ "closed", "open" or "half-open" (open turns half-open once the cool-down has passed)."""
        with self._lock:
            return self._current_state()

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def allow(self) -> bool:
        """May a call go out now? In half-open, True once (the probe) until it reports back."""
        with self._lock:
            state = self._current_state()
            if state == CLOSED:
                return True
            # A probe that never reported back (its caller died) must not wedge the
            # breaker: after another cool-down a new probe may go.
            stale = self._probe_out and self._clock() - self._probe_at >= self.cool_down_s
            if state == HALF_OPEN and (not self._probe_out or stale):
                self._state = HALF_OPEN
                self._probe_out = True
                self._probe_at = self._clock()
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            if self._state != CLOSED:
                log.info("circuit breaker closed: the hub answered again")
            self._state = CLOSED
            self._failures = 0
            self._probe_out = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == CLOSED:
                if self._failures < self.failure_threshold:
                    return
                log.warning(
                    "circuit breaker opened after %d consecutive failures; probing again in %.1f s",
                    self._failures,
                    self.cool_down_s,
                )
                self.opened_count += 1
            elif self._state == OPEN:
                return  # a late failure of a call sent before the trip: keep the cool-down as is
            self._state = OPEN
            self._opened_at = self._clock()
            self._probe_out = False

    def _current_state(self) -> str:
        if self._state == OPEN and self._clock() - self._opened_at >= self.cool_down_s:
            return HALF_OPEN
        return self._state


__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker"]
