"""Each device's clock offset as the hub sees it, and the hub time a window belongs to.

Devices stamp windows with their own clock, which may be hours off (the issue's +-1 h
devices filed windows into the past, where REST `since` hid them and the drift engine
counted them as baseline). For every stored window, received_at - end_unix is the device's
lag behind the hub plus the delivery delay; the smallest over its recent windows is the
best estimate of the lag alone (the least delayed window). The hub files a window at
end_unix + that offset, never later than its receipt, so a skewed clock lands in the right
bucket while an outbox backlog after an outage keeps its real (earlier) time.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from typing import Iterable

RECENT = 64  # windows per device the offset is estimated over


class DeviceClocks:
    """Thread-safe per-device offsets (hub time minus device time, seconds, delivery delay included)."""

    def __init__(self, recent: int = RECENT) -> None:
        self._lock = threading.Lock()
        self._lags: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=recent))

    def observe(self, device_id: str, end_unix: float, received_at: float) -> float:
        """Note one window; returns the hub time to file it at."""
        with self._lock:
            lags = self._lags[device_id]
            lags.append(received_at - end_unix)
            offset = min(lags)
        return min(received_at, end_unix + offset)

    def offset(self, device_id: str) -> float | None:
        with self._lock:
            lags = self._lags.get(device_id)
            return min(lags) if lags else None

    def offsets(self, device_ids: Iterable[str] | None = None) -> dict[str, float]:
        with self._lock:
            ids = list(self._lags) if device_ids is None else [d for d in device_ids if d in self._lags]
            return {d: round(min(self._lags[d]), 3) for d in ids if self._lags[d]}
