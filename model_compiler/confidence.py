"""Per-variant confidence calibration: a temperature fitted on held-out data and a
fallback threshold chosen for a stated goal.

Quantization shifts a variant's confidences, so a threshold tuned on FP32 makes an
INT8 variant fall back more or less often than intended. Each variant gets its own
temperature (fitted on one half of the validation split) and its own threshold
(chosen on that half for the goal); the figures it is expected to give are measured
on the other half, which neither saw. Pure: arrays in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tandem.model_compiler.errors import CompileError

GOALS = ("match-reference", "fallback-budget", "hybrid-accuracy")
MEASURE = "max_prob"  # the agent's default policy measure; the threshold is on this scale
# The agent's default max_prob threshold (edge_agent.policy.DEFAULT_THRESHOLDS); a test keeps them equal.
DEFAULT_REFERENCE_THRESHOLD = 0.8
DEFAULT_HYBRID_WITHIN_POINTS = 0.5
TEMPERATURE_BOUNDS = (0.05, 20.0)
MIN_SPLIT_SAMPLES = 20  # below this, fit and evaluate on all samples (and say so)
SPLIT_SEED = 0
_LOG_FLOOR = 1e-12
_SEARCH_STEPS = 90


@dataclass(frozen=True)
class Goal:
    """What the threshold is chosen for.

    match-reference: the fallback rate the FP32 reference has at `reference_threshold`
    (so every variant falls back as often as FP32 with the shared threshold);
    fallback-budget: a fallback rate of `budget`; hybrid-accuracy: the least fallback
    whose hybrid accuracy (edge when confident, cloud otherwise) is within
    `within_points` of the cloud model's.
    """

    kind: str = "match-reference"
    budget: float | None = None
    reference_threshold: float = DEFAULT_REFERENCE_THRESHOLD
    within_points: float = DEFAULT_HYBRID_WITHIN_POINTS

    def check(self) -> "Goal":
        if self.kind not in GOALS:
            raise CompileError(f"--confidence-goal: {self.kind!r} is not one of {', '.join(GOALS)}")
        if self.kind == "fallback-budget" and (self.budget is None or not 0.0 <= self.budget <= 1.0):
            raise CompileError(f"--fallback-budget: expected a fraction between 0 and 1, got {self.budget!r}")
        if not 0.0 <= self.reference_threshold <= 1.0:
            raise CompileError(f"--reference-threshold: {self.reference_threshold!r} must be between 0 and 1")
        if self.within_points < 0:
            raise CompileError(f"--hybrid-within: {self.within_points!r} must be >= 0 (accuracy points)")
        return self

    def to_dict(self, resolved_budget: float | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind == "match-reference":
            data.update(reference_threshold=self.reference_threshold, budget=_round(resolved_budget))
        elif self.kind == "fallback-budget":
            data["budget"] = self.budget
        else:
            data["within_points"] = self.within_points
        return data


def log_probs(output: np.ndarray, probabilities: bool) -> np.ndarray:
    """Log-probabilities [N, C] in float64: log of probabilities (floored), or log-softmax of logits.

    Temperature scaling divides these by T: for logits that is softmax(z / T), for
    probabilities p^(1/T) renormalized; both are the same operation on this scale.
    """
    x = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    if probabilities:
        return np.log(np.clip(x, _LOG_FLOOR, None))
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def scaled_probs(logp: np.ndarray, temperature: float) -> np.ndarray:
    z = logp / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logp: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logp / T)."""
    z = logp / temperature
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


def fit_temperature(logp: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The temperature in `bounds` that minimizes NLL on (logp, labels).

    NLL is convex in 1/T, hence unimodal in log T, so a golden-section search finds
    the minimum; T = 1 is returned when it is at least as good (the fit never makes
    the fit set worse than leaving the variant alone).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo + (1 - golden) * (hi - lo), lo + golden * (hi - lo)
    fa, fb = nll(logp, labels, math.exp(a)), nll(logp, labels, math.exp(b))
    for _ in range(_SEARCH_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - golden) * (hi - lo)
            fa = nll(logp, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = nll(logp, labels, math.exp(b))
    best = math.exp(a) if fa <= fb else math.exp(b)
    return 1.0 if nll(logp, labels, 1.0) <= nll(logp, labels, best) else best


def candidate_thresholds(conf: np.ndarray) -> np.ndarray:
    """Thresholds that give every distinct fallback rate on `conf` (fallback when conf < t), ascending.

    Midpoints between neighbouring confidences, so the choice does not sit on a sample;
    the lowest confidence seen stands for "no fallback".
    """
    u = np.unique(conf[np.isfinite(conf)])
    if not len(u):
        return np.array([0.0])
    cands = [float(u[0])] + list((u[:-1] + u[1:]) / 2.0) + [float(u[-1])]
    if u[-1] < 1.0:
        cands.append(1.0)
    return np.clip(np.array(sorted(set(cands))), 0.0, 1.0)


def fallback_rate(conf: np.ndarray, threshold: float) -> float:
    """Share of samples that fall back (conf < threshold; NaN always does)."""
    if not len(conf):
        return 0.0
    return float(np.mean(~(conf >= threshold)))


def threshold_for_budget(conf: np.ndarray, budget: float) -> float:
    """The threshold whose fallback rate on `conf` is closest to `budget` (ties: less fallback)."""
    cands = candidate_thresholds(conf)
    rates = np.array([fallback_rate(conf, t) for t in cands])
    return float(cands[int(np.argmin(np.abs(rates - budget) + 1e-9 * rates))])


def hybrid_accuracy(
    conf: np.ndarray, edge_pred: np.ndarray, cloud_pred: np.ndarray, labels: np.ndarray, threshold: float
) -> float:
    keep = conf >= threshold
    return float(np.mean(np.where(keep, edge_pred == labels, cloud_pred == labels)))


def threshold_for_hybrid(
    conf: np.ndarray, edge_pred: np.ndarray, cloud_pred: np.ndarray, labels: np.ndarray, within_points: float
) -> tuple[float, bool]:
    """The least-fallback threshold with hybrid accuracy >= cloud accuracy - within_points.

    Returns (threshold, goal met); when no threshold meets it, the most accurate one.
    """
    target = float(np.mean(cloud_pred == labels)) - within_points / 100.0
    cands = candidate_thresholds(conf)
    accs = np.array([hybrid_accuracy(conf, edge_pred, cloud_pred, labels, t) for t in cands])
    ok = np.nonzero(accs >= target - 1e-12)[0]
    if len(ok):
        return float(cands[ok[0]]), True  # candidates ascend, so the first one falls back least
    return float(cands[int(np.argmax(accs))]), False


def split_fit_eval(n: int, labels: np.ndarray | None, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices of the fit half and the evaluation half of the validation split, and how they were made.

    Stratified by label when labels exist (every class in both halves), seeded.
    """
    if n < MIN_SPLIT_SAMPLES:
        idx = np.arange(n)
        return (
            idx,
            idx,
            f"all {n} validation samples for fit and evaluation (fewer than {MIN_SPLIT_SAMPLES}: too few to split)",
        )
    rng = np.random.default_rng(seed)
    groups = [np.nonzero(labels == c)[0] for c in np.unique(labels)] if labels is not None else [np.arange(n)]
    fit: list[int] = []
    evaluation: list[int] = []
    for group in groups:
        shuffled = rng.permutation(group)
        fit.extend(shuffled[0::2])
        evaluation.extend(shuffled[1::2])
    how = (
        "validation split halved" + (", stratified by label" if labels is not None else "") + f" (seed {seed}): "
        "temperature and threshold fitted on one half, expected figures measured on the other"
    )
    return np.sort(np.array(fit, dtype=np.int64)), np.sort(np.array(evaluation, dtype=np.int64)), how


@dataclass(frozen=True)
class CalibrationInputs:
    """What calibration needs besides the variant's own outputs, shared by all variants."""

    fit: np.ndarray
    evaluation: np.ndarray
    split: str
    labels: np.ndarray | None
    reference_conf: np.ndarray  # the FP32 reference's raw max-probability per validation sample
    cloud_pred: np.ndarray | None = None


def calibrate_variant(
    output: np.ndarray, probabilities: bool, goal: Goal, data: CalibrationInputs, output_name: str | None = None
) -> dict[str, Any]:
    """Temperature, threshold and expected figures for one variant's outputs on the validation set.

    Returns the manifest's `variants[].calibration` mapping.
    """
    logp = log_probs(output, probabilities)
    fit, ev = data.fit, data.evaluation
    labels = data.labels
    fit_info: dict[str, Any] = {"samples_fit": int(len(fit)), "samples_eval": int(len(ev)), "split": data.split}
    if labels is not None:
        temperature = fit_temperature(logp[fit], labels[fit])
        fit_info.update(
            nll_eval_uncalibrated=_round(nll(logp[ev], labels[ev], 1.0)),
            nll_eval_calibrated=_round(nll(logp[ev], labels[ev], temperature)),
        )
    else:
        temperature = 1.0
        fit_info["temperature"] = "not fitted: the validation data has no labels"
    # T = 1 leaves probabilities as the model gives them, as the agent's policy does (no renormalizing)
    probs = (
        scaled_probs(logp, temperature)
        if temperature != 1.0 or not probabilities
        else np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    )
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)

    resolved_budget: float | None = None
    truth = labels if labels is not None else data.cloud_pred  # without labels, the cloud's answers are the truth
    goal_met = True
    if goal.kind == "hybrid-accuracy":
        if data.cloud_pred is None or truth is None:
            raise CompileError("--confidence-goal hybrid-accuracy needs --cloud-model")
        threshold, goal_met = threshold_for_hybrid(
            conf[fit], pred[fit], data.cloud_pred[fit], truth[fit], goal.within_points
        )
    else:
        if goal.kind == "match-reference":
            resolved_budget = fallback_rate(data.reference_conf[fit], goal.reference_threshold)
        else:
            resolved_budget = float(goal.budget)  # type: ignore[arg-type]
        threshold = threshold_for_budget(conf[fit], resolved_budget)

    record: dict[str, Any] = {
        "temperature": _round(temperature),
        "threshold": _round(threshold),
        "measure": MEASURE,
        "output": output_name,
        "goal": {**goal.to_dict(resolved_budget), "met_on_fit": goal_met},
        "expected_fallback_rate": _round(fallback_rate(conf[ev], threshold)),
        "expected_accuracy": _round(float(np.mean(pred[ev] == labels[ev]))) if labels is not None else None,
        "expected_hybrid_accuracy": (
            _round(hybrid_accuracy(conf[ev], pred[ev], data.cloud_pred[ev], truth[ev], threshold))
            if data.cloud_pred is not None and truth is not None
            else None
        ),
        "fit": fit_info,
    }
    if goal.kind == "match-reference":
        record["fit"]["reference_fallback_rate_eval"] = _round(
            fallback_rate(data.reference_conf[ev], goal.reference_threshold)
        )
    return record


def calibrate_task_variant(
    conf: np.ndarray,
    measure: str,
    default_threshold: float,
    goal: Goal,
    data: CalibrationInputs,
    output_name: str | None = None,
) -> dict[str, Any]:
    """Threshold and expected fallback rate for one variant of a task with its own confidence
    (a sigmoid's max(p, 1-p), a detector's share of sure boxes, a CTC line's weakest step).

    No temperature (these measures are not one softmax): quantization moves the confidence,
    so the threshold is chosen per variant on the fit half for the goal: match-reference (the
    fallback rate FP32 has at the task's default threshold) or fallback-budget.
    """
    if goal.kind == "hybrid-accuracy":
        raise CompileError(
            f"--confidence-goal hybrid-accuracy compares class answers; the {measure} confidence "
            "is calibrated for match-reference or fallback-budget"
        )
    conf = np.asarray(conf, dtype=np.float64)
    fit, ev = data.fit, data.evaluation
    if goal.kind == "match-reference":
        reference = (
            goal.reference_threshold if goal.reference_threshold != DEFAULT_REFERENCE_THRESHOLD else default_threshold
        )
        resolved_budget = fallback_rate(data.reference_conf[fit], reference)
    else:
        resolved_budget = float(goal.budget)  # type: ignore[arg-type]
    threshold = threshold_for_budget(conf[fit], resolved_budget)
    record: dict[str, Any] = {
        "temperature": 1.0,
        "threshold": _round(threshold),
        "measure": measure,
        "output": output_name,
        "goal": {**goal.to_dict(resolved_budget), "met_on_fit": True},
        "expected_fallback_rate": _round(fallback_rate(conf[ev], threshold)),
        "expected_accuracy": None,
        "expected_hybrid_accuracy": None,
        "fit": {
            "samples_fit": int(len(fit)),
            "samples_eval": int(len(ev)),
            "split": data.split,
            "temperature": "not fitted: the task's confidence is not a softmax",
        },
    }
    if goal.kind == "match-reference":
        record["fit"]["reference_fallback_rate_eval"] = _round(fallback_rate(data.reference_conf[ev], reference))
        record["fit"]["reference_threshold"] = reference  # the task's default unless --reference-threshold
    return record


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
