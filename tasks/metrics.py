"""Quality of a variant's outputs against the FP32 reference's, per task, and the gate.

Each task has one primary metric with a default budget (PRIMARY); a variant whose
primary figure (or any other budgeted figure) misses its budget breaks the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from tandem.tasks.decode import (
    Detections,
    class_labels,
    ctc_greedy,
    ctc_step_probabilities,
    dense_masks,
    detections,
    token_probabilities,
    iou_matrix,
    normalized_embeddings,
)
from tandem.tasks.errors import TaskError
from tandem.tasks.spec import TaskSpec

# kind -> (primary metric, "min" or "max", default budget)
PRIMARY: dict[str, tuple[str, str, float] | None] = {
    "classification": ("top1_agreement", "min", 0.99),
    "token_classification": ("token_agreement", "min", 0.99),
    "detection": ("map50", "min", 0.9),
    "dense": ("mask_iou", "min", 0.9),
    "ctc": ("exact_match", "min", 0.9),
    "embedding": ("cosine_p5", "min", 0.98),
    "regression": ("rel_error_p95", "max", 0.05),
    "custom": None,
}
# every metric a budget may name, with its direction
DIRECTIONS: dict[str, dict[str, str]] = {
    "classification": {"top1_agreement": "min", "accuracy": "min", "jaccard": "min"},
    "token_classification": {"token_agreement": "min", "sequence_agreement": "min", "accuracy": "min"},
    "detection": {"map50": "min", "recall": "min", "matched_iou": "min", "map50_labels": "min"},
    "dense": {"mask_iou": "min", "dice": "min", "pixel_agreement": "min"},
    "ctc": {"exact_match": "min", "cer": "max"},
    "embedding": {"cosine_p5": "min", "cosine_p50": "min", "cosine_min": "min", "topk_agreement": "min"},
    "regression": {"rel_error_p95": "max", "rel_error_mean": "max"},
    "custom": {},
}


def task_metrics(
    spec: TaskSpec,
    reference: np.ndarray,
    output: np.ndarray,
    labels: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """The task's figures for `output` against `reference` (both the task output, all samples);
    `mask` ([N, T], nonzero: counted) is the token classifier's attention mask, ignored by other tasks."""
    ref = np.asarray(reference)
    out = np.asarray(output)
    if out.shape != ref.shape and spec.kind != "detection":
        out = out.reshape(ref.shape)
    if spec.kind == "token_classification":
        return _token_classification(spec, ref, out, labels, mask)
    fn = _METRICS[spec.kind]
    return {k: float(v) for k, v in fn(spec, ref, out, labels).items()}


def _classification(spec: TaskSpec, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    a, b = class_labels(spec, ref), class_labels(spec, out)
    if spec.scores == "multi_label":
        union = (a | b).sum(axis=1)
        inter = (a & b).sum(axis=1)
        jac = np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)
        return {"top1_agreement": float(np.all(a == b, axis=1).mean()), "jaccard": float(jac.mean())}
    figures = {"top1_agreement": float((a == b).mean())}
    if labels is not None:
        figures["accuracy"] = float((b == labels).mean())
    return figures


def _token_classification(
    spec: TaskSpec, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None, mask: np.ndarray | None
) -> dict[str, float]:
    """Per-token top-1 agreement over the counted tokens (mask nonzero; all without a mask), the share of
    rows whose counted tokens all agree, and accuracy against [N, T] labels (a negative label, e.g.
    Hugging Face's -100, is not counted)."""
    a = token_probabilities(spec, ref).argmax(axis=2)
    b = token_probabilities(spec, out).argmax(axis=2)
    counted = np.ones(a.shape, bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != a.shape:
            raise TaskError(f"token mask has shape {list(m.shape)}; the output's tokens are {list(a.shape)}")
        counted = m != 0
    same = (a == b) | ~counted
    total = int(counted.sum())
    figures = {
        "token_agreement": float((a == b)[counted].mean()) if total else 1.0,
        "sequence_agreement": float(same.all(axis=1).mean()),
    }
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != a.shape:
            raise TaskError(f"token labels 'y' have shape {list(y.shape)}; expected [N, T] = {list(a.shape)}")
        scored = counted & (y >= 0)
        figures["accuracy"] = float((b == y)[scored].mean()) if scored.any() else 1.0
    return {k: float(v) for k, v in figures.items()}


def average_precision(refs: list[Detections], outs: list[Detections], iou: float = 0.5) -> dict[str, float]:
    """mAP@iou of `outs` taking `refs` as ground truth (101-point interpolation, mean over classes),
    recall of the reference boxes and the mean IoU of matched pairs."""
    classes = sorted({int(c) for d in refs for c in d.classes})
    total_ref = sum(len(d) for d in refs)
    if not classes:
        extra = sum(len(d) for d in outs)
        return {"map50": 1.0 if extra == 0 else 0.0, "recall": 1.0, "matched_iou": 1.0}
    aps = []
    matched_ious: list[float] = []
    matched_total = 0
    for cls in classes:
        hits: list[tuple[float, bool]] = []
        n_ref = 0
        for r, o in zip(refs, outs):
            rb = r.boxes[r.classes == cls]
            n_ref += len(rb)
            sel = o.classes == cls
            ob, os_ = o.boxes[sel], o.scores[sel]
            order = np.argsort(-os_, kind="stable")
            used = np.zeros(len(rb), bool)
            m = iou_matrix(ob[order], rb)
            for row, idx in enumerate(order):
                best, best_iou = -1, iou
                for j in range(len(rb)):
                    if not used[j] and m[row, j] >= best_iou:
                        best, best_iou = j, m[row, j]
                if best >= 0:
                    used[best] = True
                    matched_ious.append(float(m[row, best]))
                hits.append((float(os_[idx]), best >= 0))
            matched_total += int(used.sum())
        hits.sort(key=lambda h: -h[0])
        tp = np.cumsum([h[1] for h in hits]) if hits else np.zeros(0)
        fp = np.cumsum([not h[1] for h in hits]) if hits else np.zeros(0)
        recall = tp / n_ref if len(tp) else np.zeros(0)
        precision = tp / np.maximum(tp + fp, 1e-12) if len(tp) else np.zeros(0)
        ap = 0.0
        for t in np.linspace(0, 1, 101):
            p = precision[recall >= t]
            ap += float(p.max()) if p.size else 0.0
        aps.append(ap / 101.0)
    return {
        "map50": float(np.mean(aps)),
        "recall": matched_total / total_ref,
        "matched_iou": float(np.mean(matched_ious)) if matched_ious else 0.0,
    }


def _detection(spec: TaskSpec, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    refs = detections(spec, ref)
    # the variant's boxes down to a low score, so mAP sees its whole ranking
    outs = detections(spec, out, min_score=min(0.001, spec.score_threshold))
    figures = average_precision(refs, outs)
    kept = detections(spec, out)
    # recall counts what the variant keeps at the score threshold: boxes a user would see
    at_threshold = average_precision(refs, kept)
    figures["recall"], figures["matched_iou"] = at_threshold["recall"], at_threshold["matched_iou"]
    figures["boxes_reference"] = float(sum(len(d) for d in refs))
    figures["boxes_variant"] = float(sum(len(d) for d in kept))
    return figures


def _mask_pair(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """IoU and Dice of two label maps, averaged over the non-background labels either has."""
    labels = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    if not labels:
        return 1.0, 1.0
    ious, dices = [], []
    for lab in labels:
        x, y = a == lab, b == lab
        inter = np.count_nonzero(x & y)
        union = np.count_nonzero(x | y)
        total = np.count_nonzero(x) + np.count_nonzero(y)
        ious.append(inter / union if union else 1.0)
        dices.append(2 * inter / total if total else 1.0)
    return float(np.mean(ious)), float(np.mean(dices))


def _dense(spec: TaskSpec, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    a, b = dense_masks(spec, ref), dense_masks(spec, out)
    pairs = [_mask_pair(x, y) for x, y in zip(a, b)]
    return {
        "mask_iou": float(np.mean([p[0] for p in pairs])),
        "dice": float(np.mean([p[1] for p in pairs])),
        "pixel_agreement": float((a == b).mean()),
    }


def edit_distance(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Levenshtein distance between two label sequences."""
    if not a:
        return len(b)
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def character_error_rate(refs: list[tuple[int, ...]], outs: list[tuple[int, ...]]) -> float:
    """Total edits over total reference characters (an empty reference counts its insertions)."""
    edits = sum(edit_distance(r, o) for r, o in zip(refs, outs))
    chars = sum(len(r) for r in refs)
    return edits / chars if chars else float(edits > 0)


def _ctc(spec: TaskSpec, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    ctc_step_probabilities(spec, ref[:1])  # checks shape and blank index
    a, b = ctc_greedy(spec, ref), ctc_greedy(spec, out)
    return {"exact_match": float(np.mean([x == y for x, y in zip(a, b)])), "cer": character_error_rate(a, b)}


def _embedding(spec: TaskSpec, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    a, b = normalized_embeddings(ref), normalized_embeddings(out)
    cos = np.sum(a * b, axis=1)
    figures = {
        "cosine_p5": float(np.percentile(cos, 5)),
        "cosine_p50": float(np.percentile(cos, 50)),
        "cosine_min": float(cos.min()),
    }
    k = min(spec.top_k, len(a) - 1)
    if k >= 1:

        def neighbours(e: np.ndarray) -> np.ndarray:
            sim = e @ e.T
            np.fill_diagonal(sim, -np.inf)
            return np.argsort(-sim, axis=1, kind="stable")[:, :k]

        na, nb = neighbours(a), neighbours(b)
        figures["topk_agreement"] = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))
    return figures


def _regression(spec: TaskSpec, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    a = ref.reshape(ref.shape[0], -1).astype(np.float64)
    b = out.reshape(out.shape[0], -1).astype(np.float64)
    scale = np.linalg.norm(a, axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    rel = np.linalg.norm(a - b, axis=1) / scale
    return {"rel_error_p95": float(np.percentile(rel, 95)), "rel_error_mean": float(rel.mean())}


def _custom(spec: TaskSpec, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    return {}


_METRICS = {
    "classification": _classification,
    "detection": _detection,
    "dense": _dense,
    "ctc": _ctc,
    "embedding": _embedding,
    "regression": _regression,
    "custom": _custom,
}


# -- the gate --------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    """Whether a variant keeps the task; `reason` names the first figure that missed its budget."""

    passed: bool
    metric: str | None
    value: float | None
    budget: float | None
    margin: float | None  # how far inside the budget (negative: outside)
    reason: str


def budgets_for(spec: TaskSpec, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The primary metric's default budget, replaced or extended by `overrides` (checked by name)."""
    allowed = DIRECTIONS[spec.kind]
    budgets: dict[str, float] = {}
    primary = PRIMARY[spec.kind]
    if primary is not None:
        budgets[primary[0]] = primary[2]
    for name, value in (overrides or {}).items():
        if name not in allowed:
            raise TaskError(
                f"budget {name!r} is not a {spec.kind} metric (have: {', '.join(sorted(allowed)) or 'none'})"
            )
        budgets[name] = float(value)
    return budgets


def gate(spec: TaskSpec, figures: Mapping[str, Any], budgets: Mapping[str, float]) -> GateResult:
    """Every budgeted figure within its budget; the primary (or first failing) figure is reported."""
    primary = PRIMARY[spec.kind]
    order = sorted(budgets, key=lambda name: (primary is None or name != primary[0], name))
    shown: GateResult | None = None
    for name in order:
        budget = budgets[name]
        value = figures.get(name)
        direction = DIRECTIONS[spec.kind][name]
        if value is None:
            if name == "accuracy":
                continue  # no labels given: nothing to hold accuracy to
            return GateResult(False, name, None, budget, None, f"{name} was not measured")
        margin = float(value) - budget if direction == "min" else budget - float(value)
        sign = ">=" if direction == "min" else "<="
        result = GateResult(
            margin >= 0,
            name,
            float(value),
            budget,
            margin,
            f"{name} {float(value):.4f} {'meets' if margin >= 0 else 'misses'} budget {sign} {budget:g}",
        )
        if margin < 0:
            return result
        shown = shown or result
    if shown is not None:
        return shown
    if spec.kind == "classification":  # the compiler drops top-1 agreement when labels are given (pipeline.py)
        reason = "no top-1 agreement budget: with labels, accuracy within --max-accuracy-drop points of FP32 decides"
    elif spec.kind == "custom":
        reason = "no task budget (custom task without a metric hook)"
    else:
        reason = "no task budget"
    return GateResult(True, None, None, None, None, reason)
