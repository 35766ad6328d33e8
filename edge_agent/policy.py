"""The confidence policy: is the edge answer good enough, or should the hub answer?

Pure: takes output arrays, returns labels, confidences and a decision per row. The
agent, the benchmarks and the simulator all run this same code.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tandem.tasks import DEFAULT_THRESHOLDS as TASK_THRESHOLDS
from tandem.tasks import TaskError, TaskSpec, confidence_measure, task_confidence

KINDS = ("max_prob", "margin", "entropy")
TRANSFORMS = ("auto", "none", "softmax", "sigmoid")
DEFAULT_THRESHOLDS = {"max_prob": 0.8, "margin": 0.5, "entropy": 0.6}

Transform = Callable[[np.ndarray], np.ndarray]
log = logging.getLogger(__name__)


class PolicyError(ValueError):
    """The policy cannot score these outputs (wrong output name, wrong shape); the message says why."""


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def sigmoid_pair(x: np.ndarray) -> np.ndarray:
    """A single logit per row -> [P(negative), P(positive)]."""
    p = 1.0 / (1.0 + np.exp(-x.reshape(x.shape[0], -1)[:, :1]))
    return np.concatenate([1.0 - p, p], axis=-1)


def quantized_sum_tolerance(classes: int) -> float:
    """How far from 1 the row sums of an 8-bit softmax output may drift.

    Such outputs have steps of 1/256 and saturate at 255/256 (a TFLite INT8 variant
    answers 0.99609 for a sure class), so each class may be off by up to 1/512; a
    float softmax stays within 1e-3. Capped so that logits which happen to lie in
    [0, 1] are not mistaken for probabilities when there are many classes.
    """
    return min(0.05, 1e-3 + classes / 512.0)


PROBABILITY_SUM_TOLERANCE = 1e-3  # a float softmax's rows sum to 1 within this
PROBABILITIES, QUANTIZED, LOGITS = "probabilities", "quantized", "logits"


def auto_reading(drift: float, classes: int, positive: bool, slack: float = 0.0) -> str | None:
    """The 'auto' transform's one rule for outputs within [0, 1]: PROBABILITIES (rows sum to 1), QUANTIZED
    (8-bit probabilities, renormalized) or LOGITS, from the rows' largest distance `drift` of the sum from 1.

    `slack`: how far the caller's `drift` may be from numpy's float32 one (the one-row fast path sums
    exactly); None when that leaves the answer open, so the caller asks numpy. `_auto` passes 0.
    """
    if drift <= PROBABILITY_SUM_TOLERANCE - slack:
        return PROBABILITIES
    if drift <= PROBABILITY_SUM_TOLERANCE + slack:
        return None
    # without this, softmax() of an INT8 variant's probabilities flattens them (max 0.23
    # for 10 classes) and every request falls back to the hub (bench/hybrid.py shows it)
    if classes >= 2 and positive:
        if drift <= quantized_sum_tolerance(classes) - slack:
            return QUANTIZED
        if drift <= quantized_sum_tolerance(classes) + slack:
            return None
    return LOGITS


def _auto(x: np.ndarray) -> np.ndarray:
    """Probabilities pass through (8-bit quantized ones renormalized); anything else is treated as logits."""
    # min/max/sum, not np.allclose: this runs on every request and the arrays are tiny
    if x.size and x.min() >= 0.0 and x.max() <= 1.0:
        sums = x.sum(axis=-1, keepdims=True)
        reading = auto_reading(float(np.abs(sums - 1.0).max()), x.shape[-1], float(sums.min()) > 0.0)
        if reading is PROBABILITIES:
            return x
        if reading is QUANTIZED:
            return x / sums
    if x.shape[-1] == 1:
        return sigmoid_pair(x)
    return softmax(x)


_TRANSFORMS: dict[str, Transform] = {"none": lambda x: x, "softmax": softmax, "sigmoid": sigmoid_pair, "auto": _auto}


@dataclass(slots=True)  # not frozen: its __init__ would cost ~4x as much, once per request (nothing mutates it)
class Scores:
    """Per-row answer of the policy; `confident[i]` says row i may stay on the edge."""

    labels: np.ndarray  # int64 [rows]
    confidence: np.ndarray  # float32 [rows]; NaN counts as not confident
    confident: np.ndarray  # bool [rows]
    threshold: float
    # With a temperature: the temperature-scaled measure that `confident` compares with
    # `threshold`. `confidence` stays the model's own measure, comparable with the
    # manifest's drift reference (built from unscaled FP32 outputs).
    calibrated: np.ndarray | None = None
    # Task drift signals (TaskPolicy only): name -> values, binned by the agent's telemetry window.
    signals: Mapping[str, np.ndarray] | None = None

    @property
    def all_confident(self) -> bool:
        return bool(self.confident.all())  # the method, not np.all(): ~1 us less, twice per request


class ConfidencePolicy:
    """Score a model's outputs by max-probability, margin (top1 - top2) or normalized entropy.

    Every measure is "higher is more confident" in [0, 1] (entropy is reported as
    1 - H/log(K)), so one threshold rule fits all three. For models whose output is
    not a softmax, name the output to score and a transform (softmax for logits,
    sigmoid for one binary logit, or any callable returning probabilities).

    `temperature` (a variant's calibration from the manifest) rescales the
    probabilities as softmax(log p / T) before the decision; labels do not change.
    """

    def __init__(
        self,
        kind: str = "max_prob",
        threshold: float | None = None,
        *,
        output: str | int | None = None,
        transform: str | Transform = "auto",
        temperature: float | None = None,
    ) -> None:
        if kind not in KINDS:
            raise PolicyError(f"policy: {kind!r} is not one of {', '.join(KINDS)}")
        self.kind = kind
        self.threshold = DEFAULT_THRESHOLDS[kind] if threshold is None else float(threshold)
        _check_threshold(self.threshold)
        self._threshold32 = (self.threshold, _float32(self.threshold))  # (t, t as float32), last one asked
        if temperature is not None and not (0.0 < float(temperature) < float("inf")):
            raise PolicyError(f"temperature: {temperature!r} must be a positive number")
        self.temperature = None if temperature is None or float(temperature) == 1.0 else float(temperature)
        self.output = output
        if isinstance(transform, str):
            if transform not in _TRANSFORMS:
                raise PolicyError(f"transform: {transform!r} is not one of {', '.join(TRANSFORMS)}")
            self._transform = _TRANSFORMS[transform]
        elif callable(transform):
            self._transform = transform
        else:
            raise PolicyError(f"transform: expected a name or a callable, got {transform!r}")

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """The scored output, transformed to probabilities with shape [rows, classes]."""
        arr = raw if isinstance(raw, np.ndarray) and raw.dtype == np.float32 else np.asarray(raw, dtype=np.float32)
        if arr.ndim == 0:
            raise PolicyError("the scored output is a scalar; expected [rows, classes]")
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1) if self._transform is sigmoid_pair else arr.reshape(1, -1)
        if arr.ndim > 2:
            arr = arr.reshape(arr.shape[0], -1)
        probs = self._transform(arr)
        if probs.dtype != np.float32:
            probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[0] != arr.shape[0] or probs.shape[1] < 1:
            raise PolicyError(
                f"transform returned shape {probs.shape}; expected [rows, classes] with {arr.shape[0]} rows"
            )
        return probs

    def score(
        self,
        outputs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
        names: Sequence[str] = (),
        threshold: float | None = None,
    ) -> Scores:
        """Labels, confidences and the per-row decision; `threshold` overrides the model's."""
        return self.score_array(self.select(outputs, names), threshold)

    def score_array(self, raw: np.ndarray, threshold: float | None = None) -> Scores:
        """Score one already-selected output (e.g. the hub's answer)."""
        t = self.threshold if threshold is None else float(threshold)
        _check_threshold(t)
        if (
            type(raw) is np.ndarray
            and raw.dtype == np.float32
            and raw.shape[0:1] == (1,)
            and raw.ndim == 2
            and raw.shape[1] >= 2
            and self._transform is _auto
        ):
            fast = self._score_one_row(raw, t)
            if fast is not None:
                return fast
        probs = self.probabilities(raw)
        confidence = self.measure(probs)
        if not probs.shape[0]:
            return Scores(
                np.zeros(0, np.int64),
                confidence,
                np.zeros(0, bool),
                t,
                None if self.temperature is None else confidence,
            )
        calibrated = None if self.temperature is None else self.measure(temper(probs, self.temperature))
        decided = confidence if calibrated is None else calibrated
        nan = np.isnan(decided) | np.isnan(confidence)
        if nan.any():  # NaN compares False below, so a NaN answer is never confident
            probs = np.where(np.isnan(probs), -np.inf, probs)
            confident = (np.where(nan, np.float32(0.0), decided) >= t) & ~nan
        else:
            confident = decided >= t
        labels = probs.argmax(axis=-1).astype(np.int64)
        return Scores(labels=labels, confidence=confidence, confident=confident, threshold=t, calibrated=calibrated)

    def _score_one_row(self, raw: np.ndarray, t: float) -> Scores | None:
        """score_array() for the common request (one row, 'auto' transform) with plain floats: same result.

        numpy's per-call overhead on a 10-class row made the policy cost more than the model (docs/figures.md).
        Identical to the general path because every value is a float32 held exactly in a float,
        float32 comparisons and max are exact in double, and a double difference rounded to float32
        is the float32 difference (double rounding is innocuous for 53 vs 24 bits). What cannot be
        reproduced bit for bit in Python (numpy's float32 sums, log and exp) still runs in numpy: the
        transform when the row is not a probability vector beyond doubt, entropy, temperature.
        None: a row this path does not decide (NaN, inf, a sum too close to the 'auto' cut-off).
        """
        row = raw[0].tolist()
        total = math.fsum(row)
        if total != total or total in (math.inf, -math.inf):
            return None
        k = len(row)
        if not (min(row) >= 0.0 and max(row) <= 1.0):
            probs = softmax(raw)  # logits: what _auto does with them
        else:
            # _auto's rule, asked with the exact sum: numpy's float32 sum lies within k * 2**-23 of it
            # (values in [0, 1], sum ~ 1), so a drift that close to a cut-off is left to _auto (None)
            reading = auto_reading(abs(total - 1.0), k, total > 0.0, slack=k * 2.4e-7)
            if reading is PROBABILITIES:
                probs = raw  # passed through untouched
            elif reading is QUANTIZED:
                probs = raw / raw.sum(axis=-1, keepdims=True)  # renormalized
            elif reading is LOGITS:
                probs = softmax(raw)
            else:
                return None
        if probs is not raw:
            row = probs[0].tolist()
            total = math.fsum(row)
            if total != total or total in (math.inf, -math.inf):
                return None
        top = max(row)
        label = row.index(top)
        kind = self.kind
        if kind == "max_prob":
            confidence = np.array((top,), np.float32)
            c = top
        elif kind == "margin":
            second = sorted(row)[-2]
            confidence = np.array((top - second,), np.float32)
            c = confidence.item()
        else:
            confidence = self.measure(probs)
            c = confidence.item()
            if c != c:
                return None
        if self.temperature is None:
            calibrated, decided = None, c
        else:
            calibrated = self.measure(temper(probs, self.temperature))
            decided = calibrated.item()
            if decided != decided:
                return None
        # numpy compares a float32 array with a Python float in float32 (NEP 50), so round t too
        cached = self._threshold32
        if cached[0] != t:
            cached = self._threshold32 = (t, _float32(t))
        confident = decided >= cached[1]
        return Scores(np.array((label,), np.int64), confidence, np.array((confident,)), t, calibrated)

    def measure(self, probs: np.ndarray) -> np.ndarray:
        rows, k = probs.shape
        if rows == 0:
            return np.zeros(0, np.float32)
        if self.kind == "max_prob":
            return probs.max(axis=-1)
        elif self.kind == "margin":
            if k < 2:
                c = probs[:, 0]
            else:
                top2 = np.partition(probs, k - 2, axis=-1)[:, -2:]
                c = top2[:, 1] - top2[:, 0]
        else:
            if k < 2:
                c = np.ones(rows, np.float32)
            else:
                p = np.clip(probs, 1e-12, 1.0)
                h = -np.sum(p * np.log(p), axis=-1)
                c = 1.0 - h / np.log(k)
        return np.asarray(c, dtype=np.float32)

    def select(self, outputs: Sequence[np.ndarray] | Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
        if type(outputs) is not list and isinstance(outputs, Mapping):  # a list (the runtime's) skips typing's check
            names, outputs = list(outputs.keys()), list(outputs.values())
        if not outputs:
            raise PolicyError("the model returned no outputs to score")
        if self.output is None:
            return outputs[0]
        if isinstance(self.output, int):
            if not 0 <= self.output < len(outputs):
                raise PolicyError(f"policy output index {self.output} is out of range ({len(outputs)} outputs)")
            return outputs[self.output]
        if self.output not in names:
            raise PolicyError(f"policy output {self.output!r} is not an output of the model (have: {', '.join(names)})")
        return outputs[list(names).index(self.output)]


# a task's own confidence (tandem.tasks.confidence) is compared with these unless configured
TASK_DEFAULT_THRESHOLDS = TASK_THRESHOLDS  # tandem.tasks: the compiler's calibration starts from the same
NO_CONFIDENCE_RULES = ("edge", "cloud")


def uses_task_policy(spec: TaskSpec) -> bool:
    """False for softmax classifiers, which keep ConfidencePolicy (and its measured fast path)."""
    return not (spec.kind == "classification" and spec.scores in ("probabilities", "logits"))


class TaskPolicy(ConfidencePolicy):
    """Confidence per task from the manifest's task spec, for outputs that are not one softmax per row:
    a single sigmoid [N, 1] scores max(p, 1-p) (label p >= 0.5), multi-label its least decided label,
    a detector the share of boxes outside the ambiguity band (label: boxes kept), CTC [N, T, C] its
    weakest step (label: sequence length), a dense map the share of pixels outside the band.

    Embeddings, regression and custom tasks have no confidence: `no_confidence` "edge" keeps every
    answer on the device (confidence reported as 1.0), "cloud" sends every one to the hub.
    """

    def __init__(
        self,
        spec: TaskSpec,
        threshold: float | None = None,
        *,
        output: str | int | None = None,
        no_confidence: str = "edge",
    ) -> None:
        key = spec.scores if spec.kind == "classification" else spec.kind
        super().__init__(
            "max_prob",
            TASK_DEFAULT_THRESHOLDS.get(key, 0.8) if threshold is None else threshold,
            output=output if output is not None else spec.output,
            transform="none",
        )
        if no_confidence not in NO_CONFIDENCE_RULES:
            raise PolicyError(f"no_confidence: {no_confidence!r} is not one of {', '.join(NO_CONFIDENCE_RULES)}")
        self.spec = spec
        self.kind = key
        self.no_confidence = no_confidence

    def score_array(self, raw: np.ndarray, threshold: float | None = None) -> Scores:
        t = self.threshold if threshold is None else float(threshold)
        _check_threshold(t)
        try:
            found = task_confidence(self.spec, np.asarray(raw))
        except (TaskError, ValueError, IndexError) as exc:
            raise PolicyError(f"{self.spec.kind} output of shape {list(np.shape(raw))}: {exc}") from exc
        if found.confidence is None:
            rows = found.labels.shape[0]
            stay = self.no_confidence == "edge"
            return Scores(found.labels, np.ones(rows, np.float32), np.full(rows, stay), t, signals=found.signals)
        conf = found.confidence
        confident = np.where(np.isnan(conf), False, conf >= _float32(t))
        return Scores(found.labels, conf, confident, t, signals=found.signals or None)


def task_policy_for(
    task: Mapping[str, Any],
    config_threshold: float | None,
    output: str | int | None,
    transform: str | Transform,
    calibration: Any = None,
) -> TaskPolicy | None:
    """The TaskPolicy the manifest's task calls for, or None for a softmax classifier, for a
    configured transform (the operator's choice wins) or for a task object this agent cannot read
    (logged; the configured ConfidencePolicy then scores as before).

    Threshold: the config's, else the variant's calibration when it was fitted on this task's
    measure ("task:ctc", ...: model_compiler/confidence.py), else the task's default."""
    if transform != "auto":
        return None
    try:
        spec = TaskSpec.from_dict(task, "manifest task")
    except TaskError as exc:
        log.warning("manifest task not understood, scoring with the configured policy: %s", exc)
        return None
    if not uses_task_policy(spec):
        return None
    threshold = config_threshold
    if threshold is None and calibration is not None and calibration.measure == confidence_measure(spec):
        threshold = float(calibration.threshold)
    policy = TaskPolicy(spec, threshold, output=output)
    log.info(
        "policy: %s task scored by its own confidence (threshold=%s%s)",
        spec.kind,
        policy.threshold,
        "; no confidence: answers stay on the edge" if not spec.has_confidence else "",
    )
    return policy


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): temperature scaling on probabilities (for logits, softmax(z / T))."""
    with np.errstate(divide="ignore"):
        z = np.log(np.clip(probs, 1e-12, None)) / np.float32(temperature)
    return softmax(z).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold (None: the policy's default) and temperature an agent scores with, and where they came from."""

    threshold: float | None
    temperature: float | None
    source: str  # "config" | "calibration" | "manifest task" | "policy default"


def resolve_threshold(
    kind: str,
    config_threshold: float | None,
    calibration: Any = None,
    task_threshold: Any = None,
    output: str | int | None = None,
) -> ThresholdChoice:
    """Config threshold > the variant's calibrated threshold > manifest task.threshold > policy default.

    A calibration (protocols.manifest.Calibration) counts only for the measure and
    output it was fitted on; its temperature comes with its threshold and only then,
    because a configured threshold was set against unscaled confidences.
    """
    if config_threshold is not None:
        return ThresholdChoice(float(config_threshold), None, "config")
    if (
        calibration is not None
        and calibration.measure == kind
        and (output is None or calibration.output is None or output == calibration.output)
    ):
        return ThresholdChoice(float(calibration.threshold), float(calibration.temperature), "calibration")
    if isinstance(task_threshold, (int, float)) and not isinstance(task_threshold, bool):
        return ThresholdChoice(float(task_threshold), None, "manifest task")
    return ThresholdChoice(None, None, "policy default")


def _float32(x: float) -> float:
    """`x` rounded to float32 (and back to a Python float)."""
    return float(np.float32(x))


def _check_threshold(t: float) -> None:
    if not 0.0 <= t <= 1.0 or t != t:
        raise PolicyError(f"threshold: {t!r} must be between 0 and 1")
