"""Input summaries and binned counts: what the compiler's drift reference and the
agent's telemetry windows share, so both sides bin the same numbers the same way.

No raw input leaves a device; only these per-sample summaries, binned over the
manifest's fixed edges, do.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["CONFIDENCE_EDGES", "DEFAULT_BINS", "INPUT_SUMMARIES", "bin_counts", "confidence_counts",
           "reference_edges", "summarize_inputs"]

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
