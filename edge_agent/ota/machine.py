"""The device's OTA state machine and health-watch decision: pure values in, decisions out.

idle -> downloading -> verifying -> staged -> self_test -> switched -> watching ->
committed | rolled_back; any step before the switch may end in failed (the active
model never changed). The updater (the I/O shell) performs each step and feeds the
outcome here; the same core runs in the agent, in tests and in simulated fleets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["idle", "downloading", "verifying", "staged", "self_test", "switched", "watching",
                "committed", "rolled_back", "failed"]
Outcome = Literal["ok", "error"]

TERMINAL: tuple[State, ...] = ("committed", "rolled_back", "failed")

# (state, outcome) -> next state. Before the switch an error is `failed` (old model untouched);
# after it an error means the new model is unhealthy and the device goes back: `rolled_back`.
TRANSITIONS: dict[tuple[str, str], State] = {
    ("idle", "ok"): "downloading",
    ("downloading", "ok"): "verifying",
    ("downloading", "error"): "failed",
    ("verifying", "ok"): "staged",
    ("verifying", "error"): "failed",
    ("staged", "ok"): "self_test",
    ("staged", "error"): "failed",
    ("self_test", "ok"): "switched",
    ("self_test", "error"): "failed",
    ("switched", "ok"): "watching",
    ("switched", "error"): "rolled_back",
    ("watching", "ok"): "committed",
    ("watching", "error"): "rolled_back",
}


class TransitionError(ValueError):
    """An outcome arrived for a state that does not take it (a bug in the shell)."""


def advance(state: str, outcome: str) -> State:
    """The next state after `state` ended with `outcome`."""
    try:
        return TRANSITIONS[(state, outcome)]
    except KeyError:
        raise TransitionError(f"OTA state {state!r} has no transition on {outcome!r}") from None


@dataclass(frozen=True)
class HealthFigures:
    """What the agent served in one window: counts and the p95 latency."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    latency_p95_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0

    def merge(self, other: "HealthFigures") -> "HealthFigures":
        p95 = [x for x in (self.latency_p95_ms, other.latency_p95_ms) if x is not None]
        return HealthFigures(self.requests + other.requests, self.errors + other.errors,
                             self.fallbacks + other.fallbacks, max(p95) if p95 else None)

    def to_dict(self) -> dict[str, float | int | None]:
        return {"requests": self.requests, "errors": self.errors, "fallbacks": self.fallbacks,
                "error_rate": round(self.error_rate, 6), "fallback_rate": round(self.fallback_rate, 6),
                "latency_p95_ms": self.latency_p95_ms}


@dataclass(frozen=True)
class WatchPolicy:
    """When a switched model is kept. Rates are fractions; a rise is in absolute points."""

    watch_s: float = 60.0
    min_requests: int = 20               # below this, the window says nothing about health
    max_error_rate: float = 0.05
    max_fallback_rise: float = 0.15      # new fallback rate minus the previous version's
    max_latency_ratio: float = 2.0       # new p95 over the previous version's p95
    commit_without_traffic: bool = True  # no requests during the whole watch: keep the model

    def __post_init__(self) -> None:
        if self.watch_s < 0 or self.min_requests < 1:
            raise ValueError("watch_s must be >= 0 and min_requests >= 1")
        if not 0 <= self.max_error_rate <= 1 or not 0 <= self.max_fallback_rise <= 1 or self.max_latency_ratio <= 0:
            raise ValueError("max_error_rate and max_fallback_rise are fractions 0..1, max_latency_ratio > 0")


@dataclass(frozen=True)
class HealthDecision:
    verdict: Literal["commit", "rollback", "wait"]
    reason: str


def decide_health(baseline: HealthFigures, current: HealthFigures, elapsed_s: float, policy: WatchPolicy) -> HealthDecision:
    """Commit, roll back, or keep watching, comparing the new version with the previous one's figures.

    A breach rolls back as soon as enough requests were seen; a commit waits for the end of the watch.
    """
    if current.requests >= policy.min_requests:
        if current.error_rate > policy.max_error_rate:
            return HealthDecision("rollback", f"error rate {current.error_rate:.3f} above {policy.max_error_rate:.3f}")
        rise = current.fallback_rate - (baseline.fallback_rate if baseline.requests else 0.0)
        if rise > policy.max_fallback_rise:
            return HealthDecision("rollback", f"fallback rate {current.fallback_rate:.3f} rose by {rise:.3f} "
                                              f"(previous version {baseline.fallback_rate:.3f}), above {policy.max_fallback_rise:.3f}")
        if baseline.latency_p95_ms and current.latency_p95_ms is not None:
            ratio = current.latency_p95_ms / baseline.latency_p95_ms
            if ratio > policy.max_latency_ratio:
                return HealthDecision("rollback", f"p95 latency {current.latency_p95_ms:.2f} ms is {ratio:.1f}x the "
                                                  f"previous version's, above {policy.max_latency_ratio:.1f}x")
    if elapsed_s < policy.watch_s:
        return HealthDecision("wait", f"watching {elapsed_s:.1f}/{policy.watch_s:.1f}s")
    if current.requests < policy.min_requests and not policy.commit_without_traffic:
        return HealthDecision("rollback", f"only {current.requests} requests during the watch (need {policy.min_requests})")
    return HealthDecision("commit", f"healthy over {current.requests} requests in {elapsed_s:.1f}s")
