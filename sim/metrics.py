"""The fleet's own view of what it served, in time buckets: counts per source, latencies, accuracy. Pure."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.sim.device import Outcome

SOURCES = ("edge", "cloud", "edge-degraded", "error")


@dataclass
class Bucket:
    sources: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies: list[float] = field(default_factory=list)
    rows: int = 0
    correct: int = 0
    by_profile: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_lag_s: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.sources.values())


class Recorder:
    """Thread-safe sink for Outcomes; `rows()` turns buckets into a time series."""

    def __init__(self, bucket_s: float = 1.0) -> None:
        if bucket_s <= 0:
            raise ValueError(f"bucket_s must be > 0, got {bucket_s}")
        self.bucket_s = bucket_s
        self._lock = threading.Lock()
        self._buckets: dict[int, Bucket] = defaultdict(Bucket)
        self.total = Bucket()

    def add(self, t: float, outcome: Outcome, lag_s: float = 0.0) -> None:
        with self._lock:
            for b in (self._buckets[int(t // self.bucket_s)], self.total):
                b.sources[outcome.source] += 1
                b.latencies.append(outcome.latency_ms)
                b.rows += outcome.rows
                b.correct += outcome.correct
                b.by_profile[outcome.profile] += 1
                b.versions[outcome.version] += 1
                b.max_lag_s = max(b.max_lag_s, lag_s)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per bucket: t, requests, rates, latency percentiles, versions served."""
        with self._lock:
            items = sorted(self._buckets.items())
        return [summarize(b, t=i * self.bucket_s) for i, b in items]

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return summarize(self.total)


def summarize(b: Bucket, **extra: Any) -> dict[str, Any]:
    n = b.requests
    lat = np.asarray(b.latencies, dtype=np.float64)
    fallbacks = b.sources.get("cloud", 0) + b.sources.get("edge-degraded", 0)
    return {
        **extra,
        "requests": n,
        **{f"{s.replace('-', '_')}": b.sources.get(s, 0) for s in SOURCES},
        "fallback_rate": fallbacks / n if n else 0.0,
        "degraded_rate": b.sources.get("edge-degraded", 0) / n if n else 0.0,
        "accuracy": b.correct / b.rows if b.rows else None,
        "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "max_lag_s": b.max_lag_s,
        "versions": dict(b.versions),
        "by_profile": dict(b.by_profile),
    }
