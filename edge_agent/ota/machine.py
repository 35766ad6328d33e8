"""The device's OTA state machine and health-watch decision: pure values in, decisions out.

idle -> downloading -> verifying -> staged -> self_test -> switched -> watching ->
committed | rolled_back; any step before the switch may end in failed (the active
model never changed). The updater (the I/O shell) performs each step and feeds the
outcome here; the same core runs in the agent, in tests and in simulated fleets.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Literal, Sequence

State = Literal[
    "idle",
    "downloading",
    "verifying",
    "staged",
    "self_test",
    "switched",
    "watching",
    "committed",
    "rolled_back",
    "failed",
]
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


WATCH_SAMPLES = 8192  # latencies a watch keeps (the newest): its percentiles are over the whole watch


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank on sorted values), None for no values; numpy-free so the core stays pure."""
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))])


@dataclass(frozen=True)
class HealthFigures:
    """What the agent served in one span: counts, p95 and p50 latency, and the latencies themselves.

    `merge` pools the latencies (up to WATCH_SAMPLES, newest kept), so a watch made of many
    short polls is judged on percentiles of the whole watch, never the worst of tiny samples.
    """

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    latency_p95_ms: float | None = None
    latency_p50_ms: float | None = None
    latencies_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def of(cls, requests: int, errors: int, fallbacks: int, latencies_ms: Sequence[float]) -> "HealthFigures":
        samples = tuple(float(x) for x in latencies_ms)[-WATCH_SAMPLES:]
        return cls(requests, errors, fallbacks, percentile(samples, 95), percentile(samples, 50), samples)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def fallback_rate(self) -> float:
        return self.fallbacks / self.requests if self.requests else 0.0

    def merge(self, other: "HealthFigures") -> "HealthFigures":
        """Both spans as one: counts add, percentiles are recomputed over the pooled latencies (or,
        for figures that carry none, the request-weighted mean of their percentiles, never the max)."""
        requests = self.requests + other.requests
        errors, fallbacks = self.errors + other.errors, self.fallbacks + other.fallbacks
        if self.latencies_ms or other.latencies_ms:
            return HealthFigures.of(requests, errors, fallbacks, self.latencies_ms + other.latencies_ms)
        return HealthFigures(
            requests,
            errors,
            fallbacks,
            _weighted(self, other, "latency_p95_ms"),
            _weighted(self, other, "latency_p50_ms"),
        )

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "error_rate": round(self.error_rate, 6),
            "fallback_rate": round(self.fallback_rate, 6),
            "latency_p95_ms": self.latency_p95_ms,
            "latency_p50_ms": self.latency_p50_ms,
        }


def _weighted(a: HealthFigures, b: HealthFigures, name: str) -> float | None:
    pairs = [(getattr(f, name), max(f.requests, 1)) for f in (a, b) if getattr(f, name) is not None]
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


@dataclass(frozen=True)
class WatchPolicy:
    """When a switched model is kept. Rates are fractions; a rise is in absolute points."""

    watch_s: float = 60.0
    min_requests: int = 20  # below this, the window says nothing about health
    max_error_rate: float = 0.05
    max_fallback_rise: float = 0.15  # new fallback rate minus the previous version's
    max_latency_ratio: float = 2.0  # new p95 over the previous version's p95
    commit_without_traffic: bool = True  # no requests during the whole watch: keep the model

    def __post_init__(self) -> None:
        if self.watch_s < 0 or self.min_requests < 1:
            raise ValueError("watch_s must be >= 0 and min_requests >= 1")
        if not 0 <= self.max_error_rate <= 1 or not 0 <= self.max_fallback_rise <= 1 or self.max_latency_ratio <= 0:
            raise ValueError("max_error_rate and max_fallback_rise are fractions 0..1, max_latency_ratio > 0")


# One-sided z a rise must reach: before the watch ends the device looks again every poll, so an early
# verdict needs strong evidence (p < 0.0005, O'Brien-Fleming style); at the end, over the whole watch, p < 0.05.
Z_EARLY = 3.29
Z_FINAL = 1.645


def rise_z(new_events: int, new_n: int, old_events: int, old_n: int) -> float:
    """Pooled two-proportion z statistic for "the new rate is above the old one" (0.0 where undefined).

    Without old counts the old rate is taken as 0 and known: any event is then infinitely significant,
    and only the size of the rise decides (a device with no traffic before the update).
    """
    if new_n <= 0:
        return 0.0
    if old_n <= 0:
        return math.inf if new_events > 0 else 0.0
    p_new, p_old = new_events / new_n, old_events / old_n
    pooled = (new_events + old_events) / (new_n + old_n)
    se = math.sqrt(pooled * (1 - pooled) * (1 / new_n + 1 / old_n))
    if se == 0:
        return 0.0 if p_new <= p_old else math.inf
    return (p_new - p_old) / se


def excess_z(new_events: int, new_n: int, old_events: int, old_n: int, margin: float) -> float:
    """z statistic for "the new rate exceeds the old one by more than `margin`" (0.0 where undefined).

    Agresti-Caffo's adjusted Wald (one event and one non-event added to each side), which keeps its
    stated error at the small counts a device sees early in a watch. Without old counts the old rate
    is taken as 0 and known, and the new rate alone is tested against `margin` (score test).
    """
    if new_n <= 0:
        return 0.0
    if old_n <= 0:
        if margin <= 0:
            return math.inf if new_events > 0 else 0.0
        if margin >= 1:
            return -math.inf
        return (new_events / new_n - margin) / math.sqrt(margin * (1 - margin) / new_n)
    p_new, p_old = (new_events + 1) / (new_n + 2), (old_events + 1) / (old_n + 2)
    se = math.sqrt(p_new * (1 - p_new) / (new_n + 2) + p_old * (1 - p_old) / (old_n + 2))
    return (p_new - p_old - margin) / se


def rate_breach(
    name: str, new_events: int, new_n: int, old_events: int, old_n: int, limit: float, z_needed: float, absolute: bool
) -> str | None:
    """Why the new version's `name` rate is a regression, or None.

    A breach needs both a size and evidence, so a handful of hard inputs in a short span is not a
    regression and a real one is caught. With `absolute` (errors, which a healthy model all but never
    has): the new rate above `limit` and significantly above the old rate (`rise_z`). Otherwise
    (fallbacks, which a healthy model has at a rate of its own, in bursts when the inputs are hard):
    evidence that the rise over the old rate is MORE than `limit` (`excess_z`), not merely above 0. A
    rise just over the limit on a few requests (make demo: 6 of 14 against 11 of 108, limit 0.3,
    z for "any rise" 3.3) is no evidence of a rise beyond the limit (z 0.2): it waits for more requests.
    """
    new_rate = new_events / new_n if new_n else 0.0
    old_rate = old_events / old_n if old_n else 0.0
    size = new_rate if absolute else new_rate - old_rate
    if size <= limit:
        return None
    if absolute:
        z = rise_z(new_events, new_n, old_events, old_n)
    else:
        z = excess_z(new_events, new_n, old_events, old_n, limit)
    if z < z_needed:
        return None
    what = f"{name} rate {new_rate:.3f}" if absolute else f"{name} rate {new_rate:.3f} rose by {size:.3f}"
    evidence = "z" if absolute else f"z for a rise beyond {limit:.3f}"
    return (
        f"{what} over {new_n} requests (previous version {old_rate:.3f} over {old_n}), above {limit:.3f}; "
        f"{evidence}={z:.2f} >= {z_needed:.2f}"
    )


def latency_regression(baseline: HealthFigures, current: HealthFigures, policy: WatchPolicy) -> str | None:
    """Why the new version is slower than the old on this host, or None (also when either side has too few requests)."""
    if min(baseline.requests, current.requests) < policy.min_requests:
        return None
    if not baseline.latency_p95_ms or current.latency_p95_ms is None:
        return None
    p95 = current.latency_p95_ms / baseline.latency_p95_ms
    if p95 <= policy.max_latency_ratio:
        return None
    if baseline.latency_p50_ms and current.latency_p50_ms is not None:
        p50 = current.latency_p50_ms / baseline.latency_p50_ms
        if p50 <= policy.max_latency_ratio:
            return None  # only the tail moved: load on the host, not a slower model
        return (
            f"p95 latency {current.latency_p95_ms:.2f} ms is {p95:.1f}x and p50 {current.latency_p50_ms:.2f} ms "
            f"{p50:.1f}x the previous version's over {current.requests} requests, above {policy.max_latency_ratio:.1f}x"
        )
    return (
        f"p95 latency {current.latency_p95_ms:.2f} ms is {p95:.1f}x the previous version's over "
        f"{current.requests} requests, above {policy.max_latency_ratio:.1f}x"
    )


@dataclass(frozen=True)
class HealthDecision:
    verdict: Literal["commit", "rollback", "wait"]
    reason: str


def decide_health(
    baseline: HealthFigures, current: HealthFigures, elapsed_s: float, policy: WatchPolicy
) -> HealthDecision:
    """Commit, roll back, or keep watching, comparing the new version with the previous one's figures.

    Error and fallback rates are compared with the old version's counts by two-proportion z tests
    (`rate_breach`; fallbacks must be shown to rise by more than the limit, not merely to rise):
    once min_requests were seen, a breach of the size the policy names rolls back
    early only on strong evidence (Z_EARLY), and at the end of the watch, over the whole watch, on
    ordinary evidence (Z_FINAL); a rise of that size that is not significant is commit. Latency is judged
    once, at the end of the watch, over the whole watch's pooled latencies, against the same
    host's recent baseline, and only when both sides have min_requests: a regression needs the
    p95 ratio AND the p50 ratio (where both have one) over max_latency_ratio, so CPU noise that
    only stretches the tail does not roll a healthy release back. A commit waits for the end.
    """
    final = elapsed_s >= policy.watch_s
    if current.requests >= policy.min_requests:
        z_needed = Z_FINAL if final else Z_EARLY
        why = rate_breach(
            "error",
            current.errors,
            current.requests,
            baseline.errors,
            baseline.requests,
            policy.max_error_rate,
            z_needed,
            absolute=True,
        ) or rate_breach(
            "fallback",
            current.fallbacks,
            current.requests,
            baseline.fallbacks,
            baseline.requests,
            policy.max_fallback_rise,
            z_needed,
            absolute=False,
        )
        if why:
            return HealthDecision("rollback", why)
    if elapsed_s < policy.watch_s:
        return HealthDecision("wait", f"watching {elapsed_s:.1f}/{policy.watch_s:.1f}s")
    slow = latency_regression(baseline, current, policy)
    if slow:
        return HealthDecision("rollback", slow)
    if current.requests < policy.min_requests and not policy.commit_without_traffic:
        return HealthDecision(
            "rollback", f"only {current.requests} requests during the watch (need {policy.min_requests})"
        )
    return HealthDecision("commit", f"healthy over {current.requests} requests in {elapsed_s:.1f}s")
