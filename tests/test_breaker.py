"""edge_agent.breaker: the circuit breaker's state machine, driven by an injected clock."""

from __future__ import annotations

import threading

import pytest

from tandem.edge_agent.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        assert breaker.allow()
        breaker.record_failure()


def test_stays_closed_below_the_threshold_and_successes_reset_the_count(clock):
    breaker = CircuitBreaker(failure_threshold=3, cool_down_s=5, clock=clock)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert breaker.state == CLOSED and breaker.allow()
    assert breaker.consecutive_failures == 0


def test_opens_after_consecutive_failures_and_refuses_calls(clock):
    breaker = CircuitBreaker(failure_threshold=3, cool_down_s=5, clock=clock)
    trip(breaker)
    assert breaker.state == OPEN
    assert not any(breaker.allow() for _ in range(10))
    clock.advance(4.99)
    assert breaker.state == OPEN and not breaker.allow()
    assert breaker.opened_count == 1


def test_half_open_lets_exactly_one_probe_through_after_the_cool_down(clock):
    breaker = CircuitBreaker(failure_threshold=2, cool_down_s=5, clock=clock)
    trip(breaker)
    clock.advance(5)
    assert breaker.state == HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow() and not breaker.allow()


def test_a_successful_probe_closes_the_breaker(clock):
    breaker = CircuitBreaker(failure_threshold=2, cool_down_s=5, clock=clock)
    trip(breaker)
    clock.advance(6)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == CLOSED
    assert all(breaker.allow() for _ in range(5))
    # Closed again means the full threshold is needed to reopen.
    breaker.record_failure()
    assert breaker.state == CLOSED


def test_a_failed_probe_reopens_for_a_full_cool_down(clock):
    breaker = CircuitBreaker(failure_threshold=2, cool_down_s=5, clock=clock)
    trip(breaker)
    clock.advance(5)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.advance(4)
    assert breaker.state == OPEN
    clock.advance(1)
    assert breaker.state == HALF_OPEN and breaker.allow()
    assert breaker.opened_count == 1  # a failed probe does not count as a new trip


def test_late_failures_while_open_do_not_extend_the_cool_down(clock):
    breaker = CircuitBreaker(failure_threshold=2, cool_down_s=5, clock=clock)
    trip(breaker)
    clock.advance(3)
    breaker.record_failure()  # a request sent before the trip fails late
    clock.advance(2)
    assert breaker.state == HALF_OPEN


def test_a_probe_that_never_reports_back_does_not_wedge_the_breaker(clock):
    breaker = CircuitBreaker(failure_threshold=1, cool_down_s=5, clock=clock)
    trip(breaker)
    clock.advance(5)
    assert breaker.allow()  # probe goes out and its caller dies silently
    clock.advance(4)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_only_one_probe_among_concurrent_callers(clock):
    breaker = CircuitBreaker(failure_threshold=1, cool_down_s=1, clock=clock)
    trip(breaker)
    clock.advance(1)
    allowed = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(allowed) == [False] * 7 + [True]


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="cool_down_s"):
        CircuitBreaker(cool_down_s=-1)
