"""Per-device input streams from a labelled .npz (the digits set by default), with scheduled changes.

Pure: `DeviceStream.next(t, rows)` samples rows for time `t` (seconds since the run
started), applying every change whose window covers `t`: gaussian noise, brightness
scaling, or a class-mix shift. The scenario decides which devices get which change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

CHANGE_KINDS = ("noise", "brightness", "class_mix")


class StreamError(ValueError):
    """A data file or a scheduled change is unusable; the message says which and why."""


@dataclass(frozen=True)
class Change:
    """From `at_s` until `until_s` (None: the end), alter the stream.

    noise: add N(0, value) then clip to the data's range; brightness: multiply by value
    and clip; class_mix: sample only the labels in `classes`.
    """

    kind: str
    at_s: float
    value: float = 0.0
    until_s: float | None = None
    classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in CHANGE_KINDS:
            raise StreamError(f"change kind {self.kind!r} is not one of {', '.join(CHANGE_KINDS)}")
        if self.at_s < 0 or (self.until_s is not None and self.until_s <= self.at_s):
            raise StreamError(f"change {self.kind}: needs 0 <= at_s < until_s (got {self.at_s}, {self.until_s})")
        if self.kind == "noise" and self.value < 0:
            raise StreamError(f"noise: value is a standard deviation, must be >= 0 (got {self.value})")
        if self.kind == "brightness" and self.value <= 0:
            raise StreamError(f"brightness: value is a factor, must be > 0 (got {self.value})")
        if self.kind == "class_mix" and not self.classes:
            raise StreamError("class_mix: needs a non-empty list of classes")

    def active(self, t: float) -> bool:
        return t >= self.at_s and (self.until_s is None or t < self.until_s)


@dataclass(frozen=True)
class Dataset:
    """Inputs and labels, kept once and shared by every device's stream."""

    x: np.ndarray
    y: np.ndarray
    lo: float
    hi: float
    by_class: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray | None = None) -> "Dataset":
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim < 2 or not len(x):
            raise StreamError(f"inputs: expected [rows, ...] with rows > 0, got shape {x.shape}")
        y = np.zeros(len(x), np.int64) if y is None else np.asarray(y, dtype=np.int64).ravel()
        if len(y) != len(x):
            raise StreamError(f"labels: {len(y)} labels for {len(x)} inputs")
        by_class = {int(c): np.flatnonzero(y == c) for c in np.unique(y)}
        return cls(x, y, float(x.min()), float(x.max()), by_class)

    @classmethod
    def load(cls, path: str | Path, x_key: str = "x", y_key: str = "y") -> "Dataset":
        path = Path(path)
        try:
            with np.load(path) as npz:
                if x_key not in npz.files:
                    raise StreamError(f"{path}: no array {x_key!r} (has: {', '.join(npz.files)})")
                x = npz[x_key]
                y = npz[y_key] if y_key in npz.files else None
        except (OSError, ValueError) as exc:
            raise StreamError(f"{path}: cannot read as .npz ({exc})") from exc
        return cls.from_arrays(x, y)


class DeviceStream:
    """One device's inputs over time; deterministic for a given seed."""

    def __init__(self, data: Dataset, changes: Sequence[Change] = (), seed: int = 0) -> None:
        self.data = data
        self.changes = tuple(changes)
        self.rng = np.random.default_rng(seed)
        for c in self.changes:
            missing = [k for k in c.classes if k not in data.by_class]
            if missing:
                raise StreamError(f"class_mix: classes {missing} are not in the data (have {sorted(data.by_class)})")

    def active(self, t: float) -> list[Change]:
        return [c for c in self.changes if c.active(t)]

    def next(self, t: float, rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(inputs [rows, ...] float32, their true labels) for time t."""
        active = self.active(t)
        mix = [c for c in active if c.kind == "class_mix"]
        if mix:
            pool = np.concatenate([self.data.by_class[k] for k in mix[-1].classes])
            idx = pool[self.rng.integers(0, len(pool), size=rows)]
        else:
            idx = self.rng.integers(0, len(self.data.x), size=rows)
        x, y = self.data.x[idx], self.data.y[idx]
        altered = False
        for c in active:
            if c.kind == "noise" and c.value > 0:
                x = x + self.rng.normal(0.0, c.value, size=x.shape).astype(np.float32)
                altered = True
            elif c.kind == "brightness":
                x = x * np.float32(c.value)
                altered = True
        if altered:
            x = np.clip(x, self.data.lo, self.data.hi).astype(np.float32)
        return x, y
