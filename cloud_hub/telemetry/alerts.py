"""Alert hysteresis: a pure state machine per (cohort, signal).

An alert opens after K consecutive evaluations above `open_above` (and significant),
and closes after K consecutive evaluations below `close_below`; values in between
reset both streaks, so a signal hovering at the threshold does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Transition = Literal["opened", "closed"]


@dataclass(frozen=True)
class Hysteresis:
    open_above: float
    close_below: float
    k_open: int = 3
    k_close: int = 3

    def __post_init__(self) -> None:
        if self.close_below > self.open_above:
            raise ValueError(f"close_below ({self.close_below}) must be <= open_above ({self.open_above})")
        if self.k_open < 1 or self.k_close < 1:
            raise ValueError("k_open and k_close must be >= 1")


@dataclass(frozen=True)
class AlertState:
    is_open: bool = False
    above: int = 0
    below: int = 0


def step(
    state: AlertState, value: float | None, rule: Hysteresis, significant: bool = True
) -> tuple[AlertState, Transition | None]:
    """One evaluation. None (not enough data) changes nothing."""
    if value is None:
        return state, None
    if not state.is_open:
        if value > rule.open_above and significant:
            above = state.above + 1
            if above >= rule.k_open:
                return AlertState(is_open=True), "opened"
            return replace(state, above=above, below=0), None
        return AlertState(), None
    if value < rule.close_below:
        below = state.below + 1
        if below >= rule.k_close:
            return AlertState(), "closed"
        return replace(state, below=below, above=0), None
    return AlertState(is_open=True), None
