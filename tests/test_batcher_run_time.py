"""MicroBatcher.run_ewma_s: session.run's own time, which the agent's inline fast path decides on.

A fake clock that only the fake session moves makes these deterministic (no timing here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from tandem.hardware_profiles.runtimes import batching
from tandem.hardware_profiles.runtimes.batching import MicroBatcher


@dataclass
class _Spec:
    name: str
    dtype: str
    shape: tuple[int, ...]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedSession:
    """Takes `cost_s` of fake time per run (the next run's cost can be overridden)."""

    inputs = [_Spec("x", "float32", (-1, 2))]
    outputs = [_Spec("y", "float32", (-1, 2))]

    def __init__(self, clock: _Clock, cost_s: float) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.next_cost_s: float | None = None

    def run(self, feeds):
        cost, self.next_cost_s = (self.next_cost_s or self.cost_s), None
        self.clock.now += cost
        return [np.asarray(feeds["x"]) * 2]


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(batching.time, "perf_counter", c)
    return c


def test_unknown_until_the_first_run_then_the_runs_own_time(clock):
    session = _TimedSession(clock, 10e-6)
    with MicroBatcher(session, max_batch=1, window_ms=0) as b:
        assert b.run_ewma_s is None
        out = b.try_run_inline({"x": np.ones((1, 2), np.float32)})
        assert np.array_equal(out[0], np.full((1, 2), 2, np.float32))
        assert b.run_ewma_s == pytest.approx(10e-6)


def test_one_preempted_run_does_not_make_a_fast_model_look_slow(clock):
    session = _TimedSession(clock, 10e-6)
    x = {"x": np.ones((1, 2), np.float32)}
    with MicroBatcher(session, max_batch=1, window_ms=0) as b:
        for _ in range(5):
            b.try_run_inline(x)
        session.next_cost_s = 20e-3  # descheduled for 20 ms in the middle of a run
        b.try_run_inline(x)
        assert b.run_ewma_s < 12e-6, "a single outlier moves the estimate by at most 10%"
        for _ in range(20):
            b.try_run_inline(x)
        assert b.run_ewma_s == pytest.approx(10e-6, rel=0.2)


def test_a_slow_model_stays_slow_and_worker_runs_count_too(clock):
    session = _TimedSession(clock, 2e-3)
    with MicroBatcher(session, max_batch=1, window_ms=0) as b:
        b.run({"x": np.ones((1, 2), np.float32)}, timeout=10)  # on the worker thread
        assert b.run_ewma_s == pytest.approx(2e-3)
        session.cost_s = 4e-3  # really slower from now on: followed, at most doubling per sample
        for _ in range(30):
            b.run({"x": np.ones((1, 2), np.float32)}, timeout=10)
        assert b.run_ewma_s == pytest.approx(4e-3, rel=0.1)
