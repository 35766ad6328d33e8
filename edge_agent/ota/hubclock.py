"""The hub's time as this device can know it: OTA deadlines are the hub's, not the device's clock.

A device an hour ahead rejected every OTA command as expired (the issue: the rollout halted
and the others rolled back). Every signed command carries `issued_at` on the hub's clock;
issued_at - (local time at receipt) is the hub's lead over this device minus the delivery
delay, so the largest recent sample (the least delayed command) estimates the offset.
A deadline is then checked as local time + offset > deadline + CLOCK_TOLERANCE_S.

Limit, stated: with no earlier sample, a command that waited long in the broker makes the
offset look smaller, so it may be taken as fresh; anti-rollback and "already active" keep
such a stale install harmless.
"""

from __future__ import annotations

import threading
from collections import deque

CLOCK_TOLERANCE_S = 120.0  # on top of the estimate: clocks drift between commands, delivery jitters
RECENT = 32


class HubClock:
    """Thread-safe estimate of hub time minus local time, from hub timestamps on received messages."""

    def __init__(self, recent: int = RECENT) -> None:
        self._lock = threading.Lock()
        self._samples: deque[float] = deque(maxlen=recent)

    def observe(self, hub_time: float, local_time: float) -> None:
        with self._lock:
            self._samples.append(hub_time - local_time)

    @property
    def offset_s(self) -> float | None:
        with self._lock:
            return max(self._samples) if self._samples else None

    def expired(self, deadline: float, local_now: float, tolerance_s: float = CLOCK_TOLERANCE_S) -> float | None:
        """Seconds past `deadline` (hub time) beyond the tolerance, or None while it is still valid."""
        late = local_now + (self.offset_s or 0.0) - deadline
        return late if late > tolerance_s else None
