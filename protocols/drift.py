"""Input summaries and binned counts: what the compiler's drift reference and the
agent's telemetry windows share, so both sides bin the same numbers the same way.

No raw input leaves a device; only these per-sample summaries, binned over the
manifest's fixed edges, do.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "CONFIDENCE_EDGES",
    "DEFAULT_BINS",
    "INPUT_SUMMARIES",
    "TASK_SIGNAL_EDGES",
    "bin_counts",
    "confidence_counts",
    "reference_edges",
    "summarize_inputs",
    "task_signal_counts",
]

# name -> per-sample statistic over the flattened input (one float per sample).
INPUT_SUMMARIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: x.mean(axis=1),
    "std": lambda x: x.std(axis=1),
    "min": lambda x: x.min(axis=1),
    "max": lambda x: x.max(axis=1),
    "l2": lambda x: np.sqrt((x * x).sum(axis=1)),
}

CONFIDENCE_EDGES: list[float] = [round(i / 20, 2) for i in range(21)]  # 0.00, 0.05, ... 1.00
DEFAULT_BINS = 10

_COUNT_EDGES = [0.5, 1.5, 2.5, 3.5, 5.5, 8.5, 12.5, 20.5, 32.5, 64.5, 128.5]  # 0, 1, 2, 3, 4-5, ... > 128
_UNIT_EDGES = CONFIDENCE_EDGES[1:-1]  # 20 bins over [0, 1]

# Task signals (tandem.tasks.task_signals): name -> fixed inner edges over open-ended bins. Fixed,
# not quantiles, so windows of any task model bin alike and the manifest's reference matches them.
TASK_SIGNAL_EDGES: dict[str, list[float]] = {
    "boxes": _COUNT_EDGES,  # detection: boxes kept per image
    "box_score": _UNIT_EDGES,  # detection: score of each kept box
    "sequence_length": _COUNT_EDGES,  # CTC: decoded symbols per row
    "sequence_probability": _UNIT_EDGES,  # CTC: product of the best step probabilities
    "foreground": _UNIT_EDGES,  # dense: share of pixels over the threshold
    "positives": _COUNT_EDGES,  # multi-label: labels over the threshold per row
}


def summarize_inputs(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample summaries of a batch (axis 0 is the batch)."""
    x = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
    return {name: fn(x) for name, fn in INPUT_SUMMARIES.items()}


def reference_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> list[float]:
    """Inner bin edges at the reference quantiles; the outer bins are open-ended.

    Quantile edges give each reference bin similar mass, which keeps PSI and
    chi-square stable; duplicates (constant features) collapse to one edge.
    """
    qs = np.quantile(np.asarray(values, dtype=np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    edges = sorted({float(round(q, 9)) for q in qs})
    return edges


def bin_counts(values: np.ndarray, edges: list[float]) -> list[int]:
    """Counts over open-ended bins: (-inf, e0), [e0, e1), ..., [e_last, +inf)."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(idx, minlength=len(edges) + 1).astype(int).tolist()


def confidence_counts(confidence: np.ndarray) -> list[int]:
    """Counts of confidences in [0, 1] over CONFIDENCE_EDGES (20 closed bins)."""
    c = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    idx = np.minimum((c * 20).astype(int), 19)
    return np.bincount(idx, minlength=20).astype(int).tolist()


def task_signal_counts(name: str, values: np.ndarray) -> list[int]:
    """Counts of one task signal's values over its fixed TASK_SIGNAL_EDGES (finite values only)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return bin_counts(v[np.isfinite(v)], TASK_SIGNAL_EDGES[name])
