"""Whether a wave's fallback-rate rise is shown to be above the gate's limit, not merely seen above it. Pure.

A wave's gate averages the rise of each committed device's fallback rate over its previous
version's. Early waves are a few devices watched for seconds: `rollout_good` (8 devices, waves
25/50/100) judges its first wave on 2 devices with about 30 requests on each side, where a healthy
release's mean rise has a standard deviation near 0.06, so a bare "mean rise > 0.10" halts (and
rolls back) a healthy release in about 4% of runs, `make demo` (5 devices) in about 1% (binomial
simulation at the runs' request counts and fallback rates). The gate
now halts on evidence that the mean rise is more than the limit: a one-sided z test of the mean
of per-device differences against the limit, with each device's binomial variance taken from
Agresti-Caffo adjusted rates (one event and one non-event added per side), as the device's own
watch does (`edge_agent.ota.machine.excess_z`). A collapsed release (rise near 0.9) is still
halted on its first wave; a wave too small to tell a rise just over the limit from noise passes,
and the next, larger wave judges it on more data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

# One decision per wave (not a look on every poll): one-sided p < 0.05.
GATE_Z = 1.645


@dataclass(frozen=True)
class RateSides:
    """One device's fallbacks and requests under the previous version (baseline) and the new one (current)."""

    base_events: float  # a count; rebuilt from a rate it may be fractional
    base_n: int
    cur_events: float
    cur_n: int

    @classmethod
    def of(cls, health: dict[str, Any]) -> "RateSides | None":
        """From a device's reported watch figures ({'baseline': {...}, 'current': {...}}); None without current requests.

        Counts are read as `fallbacks` where reported, else taken as `fallback_rate` x `requests` (unrounded)."""
        base, cur = health.get("baseline") or {}, health.get("current") or {}
        cur_n = int(cur.get("requests") or 0)
        if cur_n <= 0:
            return None
        base_n = int(base.get("requests") or 0)
        return cls(_events(base, base_n), base_n, _events(cur, cur_n), cur_n)

    @property
    def rise(self) -> float:
        """The new rate minus the old (the old taken as 0 when the device had no requests before)."""
        old = self.base_events / self.base_n if self.base_n else 0.0
        return self.cur_events / self.cur_n - old

    @property
    def variance(self) -> float:
        """Variance of `rise` from adjusted rates; no baseline requests: the old rate is taken as known."""
        v = _adjusted_variance(self.cur_events, self.cur_n)
        return v + (_adjusted_variance(self.base_events, self.base_n) if self.base_n else 0.0)


def _events(side: dict[str, Any], n: int) -> float:
    if side.get("fallbacks") is not None:
        return float(side["fallbacks"])
    return float(side.get("fallback_rate") or 0.0) * n


def _adjusted_variance(events: float, n: int) -> float:
    p = (events + 1) / (n + 2)
    return p * (1 - p) / (n + 2)


def mean_rise(devices: Sequence[RateSides]) -> float:
    """The mean of the devices' rises (0.0 for none)."""
    return sum(d.rise for d in devices) / len(devices) if devices else 0.0


def mean_rise_excess_z(devices: Sequence[RateSides], limit: float) -> float:
    """z statistic for "the devices' mean rise is more than `limit`" (0.0 for no devices)."""
    if not devices:
        return 0.0
    se = math.sqrt(sum(d.variance for d in devices)) / len(devices)
    return (mean_rise(devices) - limit) / se


def fallback_rise_breach(devices: Sequence[RateSides], limit: float, z_needed: float = GATE_Z) -> str | None:
    """Why the wave's mean fallback rise fails the gate, or None: the mean above `limit` and z >= `z_needed`."""
    rise = mean_rise(devices)
    if not devices or rise <= limit:
        return None
    z = mean_rise_excess_z(devices, limit)
    if z < z_needed:
        return None
    return (
        f"fallback rate rose by {rise:.3f} on average over {len(devices)} device(s), above {limit:.3f}; "
        f"z for a rise beyond {limit:.3f}={z:.2f} >= {z_needed:.2f}"
    )
