"""The drift reference: fixed bin edges and reference counts, computed on validation data.

Agents bin their live inputs and confidences over these same edges (protocols.drift),
so the hub compares like with like.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tandem.protocols.drift import CONFIDENCE_EDGES, DEFAULT_BINS, bin_counts, confidence_counts, reference_edges, summarize_inputs


def build_drift_reference(inputs: dict[str, np.ndarray], confidence: np.ndarray | None,
                          predicted: np.ndarray | None, num_classes: int | None,
                          bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Edges and counts per input summary; confidence and class-mix counts for classifiers."""
    ref: dict[str, Any] = {"bins": bins, "samples": int(len(next(iter(inputs.values())))), "inputs": {}}
    for name, arr in inputs.items():
        per_summary = {}
        for summary, values in summarize_inputs(arr).items():
            edges = reference_edges(values, bins)
            per_summary[summary] = {"edges": edges, "counts": bin_counts(values, edges)}
        ref["inputs"][name] = per_summary
    if confidence is not None:
        ref["confidence"] = {"edges": CONFIDENCE_EDGES, "counts": confidence_counts(confidence)}
    if predicted is not None and num_classes:
        ref["classes"] = {"counts": np.bincount(predicted, minlength=num_classes).astype(int).tolist()}
    return ref
