"""Reading raw outputs per task: probabilities, labels, boxes after NMS, masks, CTC text.

Pure numpy; the compiler's gate, the agent's confidence and the hub's agreement all
decode through these functions, so every side reads an output the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandem.tasks.errors import TaskError
from tandem.tasks.spec import TaskSpec


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def _is_unit(x: np.ndarray) -> bool:
    return bool(x.size == 0 or (np.nanmin(x) >= 0.0 and np.nanmax(x) <= 1.0))


def _sums_to_one(x: np.ndarray, axis: int = -1, tol: float = 2e-2) -> bool:
    """Probabilities along `axis` (tolerant of 8-bit quantized steps)."""
    return _is_unit(x) and bool(np.allclose(x.sum(axis=axis), 1.0, atol=tol))


# -- classification --------------------------------------------------------------------


def class_probabilities(spec: TaskSpec, out: np.ndarray) -> np.ndarray:
    """[N, K] probabilities; a single sigmoid becomes [P(0), P(1)], multi-label stays per label."""
    x = np.asarray(out, dtype=np.float64)
    x = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
    if spec.scores == "logits":
        return softmax(x)
    if spec.scores == "probabilities":
        return x
    p = x if _is_unit(x) else sigmoid(x)
    if spec.scores == "sigmoid":
        p = p[:, :1]
        return np.concatenate([1.0 - p, p], axis=1)
    return p


def class_labels(spec: TaskSpec, out: np.ndarray) -> np.ndarray:
    """Top-1 label per row ([N]); multi-label: a bool matrix [N, K] of positive labels."""
    probs = class_probabilities(spec, out)
    if spec.scores == "multi_label":
        return probs >= spec.positive_threshold
    if spec.scores == "sigmoid":
        return (probs[:, 1] >= spec.positive_threshold).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


# -- detection -------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """One image's boxes after decoding: xyxy [M, 4], score [M], class [M] (int64)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def detection_layout(spec: TaskSpec, out: np.ndarray) -> str:
    """The layout of a raw head: stated, or read from the shape (anchors outnumber 4 + classes)."""
    if spec.layout != "auto":
        return spec.layout
    if out.ndim != 3:
        raise TaskError(f"detection output has shape {list(out.shape)}; expected [N, 4+C, A] or [N, A, 4+C]")
    return "channels_first" if out.shape[1] < out.shape[2] else "anchors_first"


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in `a` [M, 4] with every box in `b` [K, 4]."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int) -> np.ndarray:
    """Greedy NMS: indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        if order.size == 1:
            break
        rest = order[1:]
        ious = iou_matrix(boxes[best : best + 1], boxes[rest])[0]
        order = rest[ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _candidates(spec: TaskSpec, out: np.ndarray, min_score: float) -> list[Detections]:
    """Per image, every box scoring >= min_score, before NMS."""
    x = np.asarray(out, dtype=np.float64)
    layout = detection_layout(spec, x)
    if layout == "nms":
        if x.ndim != 3 or x.shape[2] < 6:
            raise TaskError(
                f"detection (nms layout) output has shape {list(x.shape)}; expected [N, K, 6] rows "
                "(x1, y1, x2, y2, score, class)"
            )
        found = []
        for img in x:
            keep = img[:, 4] >= min_score
            found.append(Detections(img[keep, :4], img[keep, 4], img[keep, 5].astype(np.int64)))
        return found
    if x.ndim != 3 or min(x.shape[1:]) < 5:
        raise TaskError(f"detection output has shape {list(x.shape)}; expected [N, 4+C, A] or [N, A, 4+C] with C >= 1")
    rows = x.transpose(0, 2, 1) if layout == "channels_first" else x
    found = []
    for img in rows:
        cls_scores = img[:, 4:]
        cls = cls_scores.argmax(axis=1)
        score = cls_scores[np.arange(len(cls)), cls]
        keep = score >= min_score
        b = img[keep, :4]
        if spec.box_format == "cxcywh":
            b = np.concatenate([b[:, :2] - b[:, 2:] / 2.0, b[:, :2] + b[:, 2:] / 2.0], axis=1)
        found.append(Detections(b, score[keep], cls[keep].astype(np.int64)))
    return found


def _nms_per_class(spec: TaskSpec, det: Detections) -> Detections:
    if not len(det):
        return det
    # offset boxes per class so one NMS pass never suppresses across classes
    offset = det.classes[:, None].astype(np.float64) * (np.abs(det.boxes).max() + 1.0)
    keep = nms(det.boxes + offset, det.scores, spec.iou_threshold, spec.max_boxes)
    return Detections(det.boxes[keep], det.scores[keep], det.classes[keep])


def detections(spec: TaskSpec, out: np.ndarray, min_score: float | None = None) -> list[Detections]:
    """Boxes per image scoring >= min_score (default: the spec's score_threshold), after NMS."""
    floor = spec.score_threshold if min_score is None else min_score
    found = _candidates(spec, out, floor)
    if detection_layout(spec, np.asarray(out)) == "nms":
        return found
    return [_nms_per_class(spec, d) for d in found]


# -- dense maps ------------------------------------------------------------------------


def dense_masks(spec: TaskSpec, out: np.ndarray) -> np.ndarray:
    """Integer label maps: binarized at `threshold` for one channel, argmax over axis 1 otherwise."""
    x = np.asarray(out)
    if x.ndim == 4 and x.shape[1] > 1:
        return x.argmax(axis=1).astype(np.int64)
    threshold = 0.5 if spec.threshold is None else spec.threshold
    return (x > threshold).astype(np.int64).reshape(x.shape[0], -1)


# -- token classification --------------------------------------------------------------


def token_probabilities(spec: TaskSpec, out: np.ndarray) -> np.ndarray:
    """[N, T, C] class probabilities per token (softmax over classes applied to logits)."""
    x = np.asarray(out, dtype=np.float64)
    if x.ndim != 3 or x.shape[2] < 2:
        raise TaskError(f"token_classification output has shape {list(x.shape)}; expected [N, tokens, classes]")
    return x if spec.scores == "probabilities" else softmax(x, axis=2)


# -- CTC -------------------------------------------------------------------------------


def ctc_step_probabilities(spec: TaskSpec, out: np.ndarray) -> np.ndarray:
    """[N, T, C] probabilities per step (softmax applied to logits)."""
    x = np.asarray(out, dtype=np.float64)
    if x.ndim != 3:
        raise TaskError(f"ctc output has shape {list(x.shape)}; expected [N, T, classes]")
    if spec.blank >= x.shape[2]:
        raise TaskError(f"ctc blank index {spec.blank} is outside the {x.shape[2]} classes")
    form = spec.step_scores
    if form == "auto":
        form = "probabilities" if _sums_to_one(x) else "logits"
    return x if form == "probabilities" else softmax(x, axis=2)


def ctc_greedy(spec: TaskSpec, out: np.ndarray) -> list[tuple[int, ...]]:
    """Best path per row: argmax per step, repeats collapsed, blanks dropped."""
    best = np.asarray(out).argmax(axis=2)
    texts = []
    for row in best:
        keep = np.ones(row.shape, bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != spec.blank
        texts.append(tuple(int(c) for c in row[keep]))
    return texts


# -- embeddings ------------------------------------------------------------------------


def normalized_embeddings(out: np.ndarray) -> np.ndarray:
    x = np.asarray(out, dtype=np.float64).reshape(np.asarray(out).shape[0], -1)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
