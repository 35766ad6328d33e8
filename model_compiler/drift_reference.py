"""The drift reference: fixed bin edges and reference counts, computed on validation data.

Agents bin their live inputs and confidences over these same edges (protocols.drift),
so the hub compares like with like.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tandem.protocols.drift import (
    CONFIDENCE_EDGES,
    DEFAULT_BINS,
    TASK_SIGNAL_EDGES,
    bin_counts,
    confidence_counts,
    reference_edges,
    summarize_inputs,
    task_signal_counts,
)


def build_drift_reference(
    inputs: dict[str, np.ndarray],
    confidence: np.ndarray | None,
    predicted: np.ndarray | None,
    num_classes: int | None,
    bins: int = DEFAULT_BINS,
    signals: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Edges and counts per input summary; confidence and class-mix counts for classifiers;
    task drift signals (`signals`: tandem.tasks TaskConfidence.signals of the FP32 outputs) over
    their fixed edges, under "tasks"."""
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
    tasks = {
        name: {"edges": TASK_SIGNAL_EDGES[name], "counts": task_signal_counts(name, values)}
        for name, values in sorted((signals or {}).items())
        if name in TASK_SIGNAL_EDGES
    }
    if tasks:
        ref["tasks"] = tasks
    return ref
