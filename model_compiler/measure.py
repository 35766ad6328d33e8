"""Host timing of a loaded variant: latency at batch 1, throughput at batch 8, and the schedule
that times several variants in interleaved rounds.

Both warm up first and stop at a run count or a time cap, whichever comes first, so
a slow model never stalls the compiler; figures are from the host, not the device.
Variants are compared in rounds (each once per round, the order rotated) and judged on
ratios within a round: timed one after another, a host whose load changes mid-run makes
whichever variant ran during the busy spell look slow (at load ~25 the compiler chose
OpenVINO f32 over a bf16 variant that was 1.85x faster interleaved).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, TypeVar

import numpy as np

from tandem.hardware_profiles.runtimes import RuntimeSession


T = TypeVar("T")
Clock = Callable[[], float]  # seconds, monotonic (time.perf_counter; a fake one in tests)


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p95_ms: float
    runs: int


@dataclass(frozen=True)
class Spread:
    """A figure over rounds: its median and range."""

    median: float
    low: float
    high: float

    def as_dict(self, digits: int = 3) -> dict[str, float]:
        return {"median": round(self.median, digits), "min": round(self.low, digits), "max": round(self.high, digits)}


def measure_latency(
    session: RuntimeSession,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int = 5,
    runs: int = 50,
    max_seconds: float = 3.0,
    clock: Clock = time.perf_counter,
) -> LatencyStats:
    """Per-call latency of `feeds` (usually batch 1) after `warmup` untimed calls."""
    for _ in range(warmup):
        session.run(feeds)
    samples: list[float] = []
    deadline = clock() + max_seconds
    while len(samples) < runs and (len(samples) < 3 or clock() < deadline):
        start = clock()
        session.run(feeds)
        samples.append((clock() - start) * 1000.0)
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
    clock: Clock = time.perf_counter,
) -> float:
    """Samples per second running the batched `feeds` back to back (batch = `batch` or axis 0 of the first input)."""
    batch = batch or len(next(iter(feeds.values())))
    for _ in range(warmup):
        session.run(feeds)
    done = 0
    start = clock()
    deadline = start + max_seconds
    while done < runs and (done < 2 or clock() < deadline):
        session.run(feeds)
        done += 1
    elapsed = clock() - start
    return batch * done / elapsed if elapsed > 0 else float("inf")


def rotations(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of each round: every name once, round r starting at name r (mod len), so no
    variant always runs first (after the others evicted its caches) or last."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    n = len(names)
    return [[names[(r + i) % n] for i in range(n)] for r in range(rounds)] if n else []


def in_rounds(steps: Mapping[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run every step once per round in `rotations` order; each step's results in round order."""
    out: dict[str, list[T]] = {name: [] for name in steps}
    for order in rotations(list(steps), rounds):
        for name in order:
            out[name].append(steps[name]())
    return out


def median_of(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float)))


def spread(values: Sequence[float]) -> Spread:
    """Median and range of per-round figures."""
    if not values:
        raise ValueError("spread of no values")
    return Spread(median_of(values), float(min(values)), float(max(values)))


def relative_times(rounds: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each name's per-round time over that round's geometric mean across names, median over the
    rounds: a ranking that a load changing between rounds cannot reorder (the absolute p50s can:
    a variant whose idle rounds outnumber another's looks faster). Only names timed in the most
    common number of rounds, all figures > 0, are ranked."""
    counts = [len(v) for v in rounds.values() if v and min(v) > 0]
    if not counts:
        return {}
    n = max(set(counts), key=counts.count)
    names = [k for k, v in rounds.items() if len(v) == n and min(v) > 0]
    logs = np.log(np.asarray([rounds[k] for k in names], dtype=float))  # names x rounds
    rel = np.exp(logs - logs.mean(axis=0, keepdims=True))
    return {k: float(np.median(rel[i])) for i, k in enumerate(names)}


def round_ratios(slow: Sequence[float], fast: Sequence[float]) -> Spread:
    """`slow`/`fast` within each round (how many times faster `fast` ran than `slow` beside it),
    as median and range; rounds where either figure is missing or zero are left out."""
    per_round = [a / b for a, b in zip(slow, fast) if a > 0 and b > 0]
    if not per_round:
        raise ValueError("no round has both figures")
    return spread(per_round)


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
