"""Per-model inference counters: what ModelStatistics, /v2/.../stats and /metrics report.

Pure bookkeeping under one lock; the servicer records each answered request once,
whichever door (gRPC unary, gRPC stream, REST) it came through.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

# Request latency bucket bounds in seconds (Prometheus `le`), from a fast local model to a slow cloud one.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass
class ModelCounters:
    """One model's counts since start (a copy when read through `InferenceCounters.snapshot`)."""

    success: int = 0
    success_ns: int = 0
    fail: int = 0
    fail_ns: int = 0
    rows: int = 0  # inference_count in Triton's terms: batch rows answered
    last_inference_ms: int = 0
    errors: Counter = field(default_factory=Counter)  # gRPC status code name -> count
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    latency_sum_s: float = 0.0

    def copy(self) -> "ModelCounters":
        return ModelCounters(
            self.success,
            self.success_ns,
            self.fail,
            self.fail_ns,
            self.rows,
            self.last_inference_ms,
            Counter(self.errors),
            list(self.bucket_counts),
            self.latency_sum_s,
        )


class InferenceCounters:
    """Thread-safe per-model counters, keyed by the served model's name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelCounters] = {}

    def record(self, model: str, seconds: float, *, rows: int = 0, error: str | None = None) -> None:
        """Count one answered request (`error`: the status code name when it failed)."""
        ns = int(seconds * 1e9)
        with self._lock:
            c = self._models.setdefault(model, ModelCounters())
            c.last_inference_ms = int(time.time() * 1000)
            if error is None:
                c.success += 1
                c.success_ns += ns
                c.rows += rows
            else:
                c.fail += 1
                c.fail_ns += ns
                c.errors[error] += 1
            index = bisect.bisect_left(LATENCY_BUCKETS_S, seconds)
            if index < len(c.bucket_counts):
                c.bucket_counts[index] += 1
            c.latency_sum_s += seconds

    def snapshot(self) -> dict[str, ModelCounters]:
        with self._lock:
            return {name: c.copy() for name, c in self._models.items()}

    def get(self, model: str) -> ModelCounters:
        with self._lock:
            c = self._models.get(model)
            return c.copy() if c is not None else ModelCounters()
