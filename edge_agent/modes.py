"""Serving modes and the fallback budget: a pure decision per request, taken before the hub is asked.

A device serves edge-only, cloud-only, hybrid (the hub when the edge is unsure) or
shadow (always the edge answer; a sample of requests is also sent to the hub off the
request path, and the two answers' agreement is reported). Every hub call spends the
device's fallback budget (requests per second with a burst, bytes of request payload per
hour); once it is spent the agent answers on the edge, flagged degraded, with the reason.
Time is passed in, so tests and the simulator drive it without sleeping.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from enum import Enum


class ServingMode(str, Enum):
    EDGE_ONLY = "edge-only"
    CLOUD_ONLY = "cloud-only"
    HYBRID = "hybrid"
    SHADOW = "shadow"

    @classmethod
    def parse(cls, value: "str | ServingMode") -> "ServingMode":
        """'hybrid' -> ServingMode.HYBRID; ValueError naming the choices."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{value!r} is not one of {', '.join(m.value for m in cls)}") from None


class Action(str, Enum):
    EDGE = "edge"  # answer on the edge; the hub is not asked
    CLOUD = "cloud"  # ask the hub and answer with it (the edge answer, degraded, if it fails)
    SHADOW = "shadow"  # answer on the edge now; ask the hub in the background and compare
    BUDGET_SPENT = "budget-spent"  # the hub was wanted but the budget is spent: edge answer, degraded


ACTIONS = tuple(a.value for a in Action)
BUDGET_REASON = "fallback budget spent"  # the start of every budget-spent detail (reply and logs)
HOUR_S = 3600.0
HOUR_SLOTS = 60  # the bytes-per-hour window is kept in one-minute slots: O(1) per request, strict over any hour


@dataclass(frozen=True)
class Decision:
    action: Action
    detail: str = ""  # why, when the answer is degraded


EDGE = Decision(Action.EDGE)
CLOUD = Decision(Action.CLOUD)
SHADOW = Decision(Action.SHADOW)


class FallbackBudget:
    """Token bucket on hub calls (`rps`, `burst`) and a sliding hour on their payload bytes.

    Over any span of t seconds it admits at most burst + rps * t calls, and over any hour
    at most `bytes_per_hour` bytes; None leaves that limit off. Not thread-safe: the
    agent's I/O loop is its only caller.
    """

    def __init__(
        self, rps: float | None = None, burst: float | None = None, bytes_per_hour: int | None = None, now: float = 0.0
    ) -> None:
        if rps is not None and not (rps > 0 and math.isfinite(rps)):
            raise ValueError(f"budget_rps: {rps!r} must be a positive number (or None for no limit)")
        if burst is not None and not (burst >= 1 and math.isfinite(burst)):
            raise ValueError(f"budget_burst: {burst!r} must be >= 1")
        if bytes_per_hour is not None and bytes_per_hour < 1:
            raise ValueError(f"budget_bytes_per_hour: {bytes_per_hour!r} must be a positive integer (or None)")
        self.rps = rps
        self.burst = float(burst if burst is not None else max(1.0, rps or 1.0))
        self.bytes_per_hour = bytes_per_hour
        self._tokens = self.burst
        self._last = now
        self._slot_s = HOUR_S / HOUR_SLOTS
        self._slots: deque[list[int]] = deque()  # [slot index, bytes admitted in it], oldest first
        self._bytes = 0  # sum over _slots
        self.spent = {"requests": 0, "bytes": 0}  # refusals by limit
        burst_text = f"{self.burst:g}"
        self._reasons = {
            "requests": f"{BUDGET_REASON}: over {rps or 0:g} hub requests/s (burst {burst_text})",
            "bytes": f"{BUDGET_REASON}: over {bytes_per_hour or 0} request bytes/hour",
        }

    @property
    def limited(self) -> bool:
        return self.rps is not None or self.bytes_per_hour is not None

    def take(self, now: float, nbytes: int = 0) -> str | None:
        """Spend one call of `nbytes`; None when admitted, else the refusal's reason (nothing is spent)."""
        if self.rps is not None:
            dt = now - self._last
            if dt > 0:  # a clock that steps back refills nothing
                self._tokens = min(self.burst, self._tokens + dt * self.rps)
                self._last = now
            if self._tokens < 1.0:
                self.spent["requests"] += 1
                return self._reasons["requests"]
        if self.bytes_per_hour is not None:
            slot = math.floor(now / self._slot_s)
            # Slots older than the previous HOUR_SLOTS are out of every hour that includes `now`.
            while self._slots and self._slots[0][0] < slot - HOUR_SLOTS:
                self._bytes -= self._slots.popleft()[1]
            if self._bytes + nbytes > self.bytes_per_hour:
                self.spent["bytes"] += 1
                return self._reasons["bytes"]
            if self._slots and self._slots[-1][0] >= slot:
                self._slots[-1][1] += nbytes  # same slot (or a clock step back: charge the newest)
            else:
                self._slots.append([slot, nbytes])
            self._bytes += nbytes
        if self.rps is not None:
            self._tokens -= 1.0
        return None

    def tokens(self, now: float | None = None) -> float:
        """Hub calls the bucket would admit now (infinite with no request limit)."""
        if self.rps is None:
            return math.inf
        if now is None or now <= self._last:
            return self._tokens
        return min(self.burst, self._tokens + (now - self._last) * self.rps)

    def bytes_left(self) -> float:
        """Payload bytes still allowed in the current hour, as of the last call (infinite with no limit)."""
        return math.inf if self.bytes_per_hour is None else float(self.bytes_per_hour - self._bytes)


def effective_mode(requested: ServingMode | None, device: ServingMode) -> ServingMode:
    """The mode a request is served in: its own (edge-only or cloud-only) wins over the device's; None (auto)
    keeps the device's. The one precedence rule, for the general path and the fast lane alike."""
    return requested if requested is not None else device


def decide(
    mode: ServingMode,
    confident: bool,
    budget: FallbackBudget | None,
    now: float,
    shadow_sample_rate: float = 0.0,
    rng: random.Random | None = None,
    nbytes: int = 0,
) -> Decision:
    """What to do with one scored request; spends the budget only when the hub will be asked."""
    if mode is ServingMode.EDGE_ONLY or (mode is ServingMode.HYBRID and confident):
        return EDGE
    if mode is ServingMode.SHADOW:
        if shadow_sample_rate <= 0.0 or (shadow_sample_rate < 1.0 and (rng or random).random() >= shadow_sample_rate):
            return EDGE
        # a shadow sample over budget is simply not taken: the answer was the edge's anyway
        return SHADOW if budget is None or budget.take(now, nbytes) is None else EDGE
    reason = None if budget is None else budget.take(now, nbytes)
    return CLOUD if reason is None else Decision(Action.BUDGET_SPENT, reason)
