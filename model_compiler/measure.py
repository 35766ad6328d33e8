"""Host timing of a loaded variant: latency at batch 1, throughput at batch 8.

Both warm up first and stop at a run count or a time cap, whichever comes first, so
a slow model never stalls the compiler; figures are from the host, not the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from tandem.hardware_profiles.runtimes import RuntimeSession


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p95_ms: float
    runs: int


def measure_latency(
    session: RuntimeSession,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int = 5,
    runs: int = 50,
    max_seconds: float = 3.0,
) -> LatencyStats:
    """Per-call latency of `feeds` (usually batch 1) after `warmup` untimed calls."""
    for _ in range(warmup):
        session.run(feeds)
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(samples) < runs and (len(samples) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        session.run(feeds)
        samples.append((time.perf_counter() - start) * 1000.0)
    arr = np.asarray(samples)
    return LatencyStats(float(np.percentile(arr, 50)), float(np.percentile(arr, 95)), len(samples))


def measure_throughput(
    session: RuntimeSession,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int = 3,
    runs: int = 20,
    max_seconds: float = 3.0,
    batch: int | None = None,
) -> float:
    """Samples per second running the batched `feeds` back to back (batch = `batch` or axis 0 of the first input)."""
    batch = batch or len(next(iter(feeds.values())))
    for _ in range(warmup):
        session.run(feeds)
    done = 0
    start = time.perf_counter()
    deadline = start + max_seconds
    while done < runs and (done < 2 or time.perf_counter() < deadline):
        session.run(feeds)
        done += 1
    elapsed = time.perf_counter() - start
    return batch * done / elapsed if elapsed > 0 else float("inf")


def batch_of(
    data: Mapping[str, np.ndarray], size: int, axes: Mapping[str, int | None] | None = None
) -> dict[str, np.ndarray]:
    """The first `size` samples of every input along its batch axis (`axes`, default 0), repeated
    when the data has fewer; a scalar input (axis None) is passed as it is."""
    axes = axes or {}
    out = {}
    for name, arr in data.items():
        axis = axes.get(name, 0)
        if axis is None or not np.ndim(arr):
            out[name] = np.asarray(arr, order="C")
            continue
        reps = int(np.ceil(size / arr.shape[axis]))
        tiled = np.concatenate([arr] * reps, axis=axis) if reps > 1 else arr
        out[name] = np.ascontiguousarray(np.take(tiled, np.arange(size), axis=axis))
    return out
