"""Token buckets per key (a device id, a REST token id): the hub's rate limits.

Device limits live in protocols/limits.py; REST limits in HubConfig.http (rate_per_s, burst).

Pure and clocked from outside, so tests step time; memory is bounded by forgetting
the buckets touched longest ago (a forgotten device starts with a full bucket again).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

from tandem.protocols import limits


class RateLimiter:
    """`allow(key)` takes one token from key's bucket (rate per second, capacity `burst`)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        max_keys: int = limits.RATE_LIMIT_MAX_DEVICES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate limiter: rate_per_s > 0, burst >= 1 and max_keys >= 1 are required")
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()
        self.refused = 0

    def allow(self, key: str, cost: float = 1.0) -> bool:
        return self.take(key, cost) == 0.0

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens and return 0.0, or take nothing and return the seconds until they are there
        (what a 429's Retry-After says)."""
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= cost:
                tokens -= cost
            else:
                self.refused += 1
                wait = (cost - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait

    def __len__(self) -> int:
        return len(self._buckets)
