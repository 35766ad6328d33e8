"""Hardware emulation for virtual devices: compute speed, model budgets, connectivity. Pure.

Edge latency is the host's measured per-row time for the variant divided by the
profile's `relative_speed` (cpu-x86 = 1.0, the host), with a little lognormal jitter.
A variant bigger than the profile's model-size budget, or whose estimated resident
size exceeds its memory budget, is refused as a device would refuse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tandem.hardware_profiles import Profile

# Resident size of a loaded model relative to its file (weights + arena + runtime); an estimate.
RESIDENT_FACTOR = 3.0
# The agent process itself, before any model, counted against memory_budget_mb.
AGENT_OVERHEAD_MB = 40.0


class ModelRefused(RuntimeError):
    """The variant does not fit this device's hardware budgets; the message names the budget."""


def emulated_latency_ms(
    host_ms_per_row: float, rows: int, profile: Profile, rng: np.random.Generator | None = None, jitter: float = 0.1
) -> float:
    """What `rows` rows cost on `profile`, from the host's per-row time (batch 1 cost for one row)."""
    base = host_ms_per_row * max(rows, 1) / profile.relative_speed
    if rng is None or jitter <= 0:
        return base
    return float(base * rng.lognormal(0.0, jitter))


def check_fits(file_bytes: int, profile: Profile, *, resident_factor: float = RESIDENT_FACTOR) -> None:
    """Raise ModelRefused when a variant of `file_bytes` does not fit `profile`."""
    size_mb = file_bytes / (1024 * 1024)
    if size_mb > profile.model_size_budget_mb:
        raise ModelRefused(
            f"{profile.name}: the variant is {size_mb:.2f} MB, over the model_size_budget_mb of "
            f"{profile.model_size_budget_mb:g} MB"
        )
    resident = AGENT_OVERHEAD_MB + size_mb * resident_factor
    if resident > profile.memory_budget_mb:
        raise ModelRefused(
            f"{profile.name}: the model needs about {resident:.0f} MB resident, over the "
            f"memory_budget_mb of {profile.memory_budget_mb:g} MB"
        )


@dataclass(frozen=True)
class Connectivity:
    """Intermittent connectivity: every `every_s`, the device is offline for `offline_s` (phase per device)."""

    every_s: float = 0.0
    offline_s: float = 0.0
    phase_s: float = 0.0

    def __post_init__(self) -> None:
        if self.every_s < 0 or self.offline_s < 0 or (self.every_s and self.offline_s >= self.every_s):
            raise ValueError(f"connectivity: need 0 <= offline_s < every_s (got {self.offline_s}, {self.every_s})")

    def online(self, t: float) -> bool:
        if not self.every_s or not self.offline_s:
            return True
        return math.fmod(t + self.phase_s, self.every_s) >= self.offline_s


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), or None for no values."""
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
