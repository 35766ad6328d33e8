"""How many ModelInfer calls the hub holds at once, apart from any thread pool.

Pure bookkeeping for the asynchronous server: a call is admitted while fewer than
`limit` are in flight; past it the caller is told RESOURCE_EXHAUSTED with a retry hint
of about one request's current time in the hub (a slot frees within about that).
One event loop calls it, so it takes no lock.
"""

from __future__ import annotations

from dataclasses import dataclass

_EWMA_WEIGHT = 0.05
_MIN_PUSHBACK_MS = 10


@dataclass
class AdmissionStats:
    admitted: int = 0
    refused: int = 0
    peak_in_flight: int = 0


class Admission:
    """Counts calls in flight against `limit`; `enter` refuses past it, `leave` frees a slot."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"admission limit must be >= 1, got {limit}")
        self.limit = limit
        self.in_flight = 0
        self.stats = AdmissionStats()
        self._latency_s: float | None = None

    def enter(self) -> bool:
        """Take a slot; False (and nothing taken) when `limit` calls are already in flight."""
        if self.in_flight >= self.limit:
            self.stats.refused += 1
            return False
        self.in_flight += 1
        self.stats.admitted += 1
        if self.in_flight > self.stats.peak_in_flight:
            self.stats.peak_in_flight = self.in_flight
        return True

    def leave(self, seconds: float) -> None:
        """Free a slot; `seconds` is how long the call was held (it feeds the retry hint)."""
        self.in_flight -= 1
        if self._latency_s is None:
            self._latency_s = seconds
        else:
            self._latency_s += _EWMA_WEIGHT * (seconds - self._latency_s)

    def pushback_ms(self) -> int:
        """The retry hint for a refused call: one call's recent time in the hub, at least 10 ms."""
        return max(_MIN_PUSHBACK_MS, int((self._latency_s or 0.0) * 1000.0))
