"""How sure an answer is, per task: one figure per row in [0, 1] (higher is surer),
with the task's own detail, or an explicit "no confidence" for tasks that have none.

binary sigmoid: max(p, 1-p). multi-label: the least decided label's max(p, 1-p).
detection: 1 - share of boxes whose score sits in the ambiguity band (uncertain boxes
are counted). dense: share of pixels outside the band. CTC: the weakest step's
probability (the sequence probability comes beside it). Token classification: the weakest
token's top probability (a sequence is as sure as its least sure token; every position counts,
padding included, since the agent sees the output and not the attention mask). Embedding, regression, custom:
None, and the agent keeps them on the edge unless a rule is configured.

`signals` are the values the agent's telemetry bins for drift (names and edges:
tandem.protocols.drift.TASK_SIGNAL_EDGES; the compiler's reference bins the same):
detection boxes per image and each kept box's score, CTC sequence length and
probability, dense foreground share, multi-label positives per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tandem.tasks.decode import _candidates, class_probabilities, ctc_step_probabilities, sigmoid, token_probabilities
from tandem.tasks.spec import TaskSpec


# The agent's threshold per task confidence when neither config nor a calibration sets one.
DEFAULT_THRESHOLDS = {
    "sigmoid": 0.8,
    "multi_label": 0.8,
    "detection": 0.8,
    "dense": 0.9,
    "ctc": 0.5,
    "token_classification": 0.5,
}


def confidence_measure(spec: TaskSpec) -> str | None:
    """The name of a task's own confidence measure ("task:sigmoid", "task:ctc", ...); None for
    softmax classifiers (max_prob) and for tasks with no confidence."""
    if spec.kind == "classification" and spec.scores in ("probabilities", "logits"):
        return None
    key = spec.scores if spec.kind == "classification" else spec.kind
    return f"task:{key}" if key in DEFAULT_THRESHOLDS else None


@dataclass(frozen=True)
class TaskConfidence:
    """Per-row confidence (None: this task has none) and labels, plus task details per row."""

    confidence: np.ndarray | None  # float32 [rows]
    labels: np.ndarray  # int64 [rows]: class, boxes kept, sequence length, ...
    detail: dict[str, np.ndarray] = field(default_factory=dict)
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # drift signal -> values (per row or per box)


def task_confidence(spec: TaskSpec, out: np.ndarray) -> TaskConfidence:
    """Confidence of each row of the task output `out`."""
    x = np.asarray(out)
    rows = x.shape[0] if x.ndim else 1
    kind = spec.kind
    if kind == "classification":
        probs = class_probabilities(spec, x)
        if spec.scores == "multi_label":
            sure = np.maximum(probs, 1.0 - probs).min(axis=1) if probs.shape[1] else np.ones(rows)
            positives = (probs >= spec.positive_threshold).sum(axis=1)
            return TaskConfidence(
                sure.astype(np.float32), positives.astype(np.int64), signals={"positives": positives.astype(np.float64)}
            )
        if spec.scores == "sigmoid":
            p = probs[:, 1]
            return TaskConfidence(
                np.maximum(p, 1.0 - p).astype(np.float32), (p >= spec.positive_threshold).astype(np.int64)
            )
        return TaskConfidence(probs.max(axis=1).astype(np.float32), probs.argmax(axis=1).astype(np.int64))
    if kind == "detection":
        low, high = spec.band
        found = _candidates(spec, x, min(low, spec.score_threshold))
        uncertain = np.array([np.count_nonzero((d.scores >= low) & (d.scores < high)) for d in found], np.int64)
        sure = np.array([np.count_nonzero(d.scores >= high) for d in found], np.int64)
        kept = np.array([np.count_nonzero(d.scores >= spec.score_threshold) for d in found], np.int64)
        total = uncertain + sure
        conf = np.where(total > 0, 1.0 - uncertain / np.maximum(total, 1), 1.0)
        scores = [d.scores[d.scores >= spec.score_threshold] for d in found]
        return TaskConfidence(
            conf.astype(np.float32),
            kept,
            {"uncertain_boxes": uncertain},
            {"boxes": kept.astype(np.float64), "box_score": np.concatenate(scores) if scores else np.zeros(0)},
        )
    if kind == "dense":
        p = x.reshape(rows, -1).astype(np.float64)
        if x.ndim == 4 and x.shape[1] > 1:
            top = np.sort(x.reshape(rows, x.shape[1], -1), axis=1)
            p = (top[:, -1] - top[:, -2]).reshape(rows, -1)  # margin per pixel
            conf = (p >= spec.band[1] - spec.band[0]).mean(axis=1)
        else:
            if p.size and not (p.min() >= 0.0 and p.max() <= 1.0):
                p = sigmoid(p)
            low, high = spec.band
            band = (p >= low) & (p < high)
            conf = 1.0 - band.mean(axis=1)
        fg = (x.reshape(rows, -1) > (0.5 if spec.threshold is None else spec.threshold)).sum(axis=1)
        pixels = max(1, x.reshape(rows, -1).shape[1])
        return TaskConfidence(conf.astype(np.float32), fg.astype(np.int64), signals={"foreground": fg / pixels})
    if kind == "token_classification":
        probs = token_probabilities(spec, x)
        tagged = np.count_nonzero(probs.argmax(axis=2) != 0, axis=1).astype(np.int64)  # label: tokens not class 0
        return TaskConfidence(probs.max(axis=2).min(axis=1).astype(np.float32), tagged)
    if kind == "ctc":
        probs = ctc_step_probabilities(spec, x)
        best = probs.max(axis=2)
        path = probs.argmax(axis=2)
        lengths = np.array([np.count_nonzero((r != spec.blank) & np.r_[True, r[1:] != r[:-1]]) for r in path], np.int64)
        seq_prob = np.exp(np.log(np.clip(best, 1e-12, 1.0)).sum(axis=1))
        return TaskConfidence(
            best.min(axis=1).astype(np.float32),
            lengths,
            {"sequence_probability": seq_prob.astype(np.float32)},
            {"sequence_length": lengths.astype(np.float64), "sequence_probability": seq_prob},
        )
    return TaskConfidence(None, np.zeros(rows, np.int64))
