"""Edge/cloud agreement per row, by the task: how far the edge's answer is from the hub's
(the hub taken as the reference), as one figure in [0, 1] per row (1: the same answer).

classification: same label (every label for multi-label). token classification: share of tokens
with the same label (every position: the mask is not here). detection: F1 of the edge's boxes
against the hub's at IoU 0.5, same class. CTC: 1 - character error rate of the decoded
sequence. dense: mask IoU. embedding: cosine (negative counted as 0). regression: 1 - relative
error (at most 1). custom: None (nothing to compare). The agent bins these into its telemetry
window for requests the hub answered.
"""

from __future__ import annotations

import numpy as np

from tandem.tasks.decode import (
    class_labels,
    ctc_greedy,
    dense_masks,
    detections,
    normalized_embeddings,
    token_probabilities,
)
from tandem.tasks.metrics import _mask_pair, average_precision, edit_distance
from tandem.tasks.spec import TaskSpec


def row_agreement(spec: TaskSpec, edge: np.ndarray, cloud: np.ndarray) -> np.ndarray | None:
    """Per-row agreement of `edge` with `cloud` (both the task output, same rows), or None for custom."""
    e, c = np.asarray(edge), np.asarray(cloud)
    if e.shape[:1] != c.shape[:1]:
        raise ValueError(f"edge output has {e.shape[:1]} rows, the hub's {c.shape[:1]}")
    kind = spec.kind
    if kind == "classification":
        a, b = class_labels(spec, c), class_labels(spec, e)
        same = np.all(a == b, axis=1) if a.ndim == 2 else a == b
        return same.astype(np.float64)
    if kind == "token_classification":
        same = token_probabilities(spec, c).argmax(axis=2) == token_probabilities(spec, e).argmax(axis=2)
        return same.mean(axis=1).astype(np.float64)
    if kind == "detection":
        figures = []
        for r, o in zip(detections(spec, c), detections(spec, e)):
            if not len(r) and not len(o):
                figures.append(1.0)
                continue
            matched = average_precision([r], [o])["recall"] * len(r) if len(r) else 0.0
            figures.append(2.0 * matched / (len(r) + len(o)))
        return np.asarray(figures, np.float64)
    if kind == "ctc":
        pairs = zip(ctc_greedy(spec, c), ctc_greedy(spec, e))
        return np.asarray(
            [1.0 - min(1.0, edit_distance(r, o) / max(len(r), 1)) if (r or o) else 1.0 for r, o in pairs], np.float64
        )
    if kind == "dense":
        return np.asarray([_mask_pair(r, o)[0] for r, o in zip(dense_masks(spec, c), dense_masks(spec, e))], np.float64)
    if kind == "embedding":
        return np.clip(np.sum(normalized_embeddings(c) * normalized_embeddings(e), axis=1), 0.0, 1.0)
    if kind == "regression":
        a = c.reshape(len(c), -1).astype(np.float64)
        b = e.reshape(len(e), -1).astype(np.float64)
        scale = np.linalg.norm(a, axis=1)
        rel = np.linalg.norm(a - b, axis=1) / np.where(scale > 0, scale, 1.0)
        return 1.0 - np.minimum(rel, 1.0)
    return None
