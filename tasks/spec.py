"""What a model's outputs mean: a task spec, carried in the manifest as a JSON object.

Strict: unknown fields, wrong types and out-of-range values are refused with the
field's name, so a typo in `--task-option` or a hand-edited manifest fails at once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from tandem.tasks.errors import TaskError

KINDS = ("classification", "token_classification", "detection", "dense", "ctc", "embedding", "regression", "custom")
CLASSIFICATION_SCORES = ("probabilities", "logits", "sigmoid", "multi_label")
DETECTION_LAYOUTS = ("auto", "channels_first", "anchors_first", "nms")
BOX_FORMATS = ("cxcywh", "xyxy")
PROBABILITY_FORMS = ("auto", "probabilities", "logits")
# scores inside the band are neither surely in nor surely out
DEFAULT_AMBIGUITY = {"detection": (0.15, 0.4), "dense": (0.3, 0.7)}

# the fields each kind writes and reads; "kind", "output" and "metric" belong to all
_COMMON = ("kind", "output", "metric", "pad_value", "state")
FIELDS: dict[str, tuple[str, ...]] = {
    "classification": ("scores", "threshold", "positive_threshold", "labels"),
    "token_classification": ("scores", "threshold", "mask"),
    "detection": ("layout", "box_format", "score_threshold", "iou_threshold", "ambiguity", "max_boxes"),
    "dense": ("threshold", "ambiguity"),
    "ctc": ("blank", "step_scores"),
    "embedding": ("top_k",),
    "regression": (),
    "custom": (),
}


@dataclass(frozen=True)
class TaskSpec:
    """One model task. Only the fields of `kind` (see FIELDS) are meaningful and serialized.

    classification: `scores` says what the output holds (softmax probabilities, logits,
    one sigmoid probability per row [N,1], or independent sigmoids per label);
    `threshold` is an optional agent confidence threshold; `positive_threshold` makes a
    sigmoid/multi-label score a positive label; `labels` names the classes in score order (ints or
    strings, e.g. a scikit-learn classifier's classes_), None: the class index is the label.
    detection: YOLO-style heads `[N, 4+C, A]` (channels_first) or `[N, A, 4+C]`
    (anchors_first) decoded with per-class NMS, or outputs already past NMS `[N, K, 6]`
    rows (x1, y1, x2, y2, score, class); boxes scoring inside `ambiguity` are uncertain.
    dense: maps binarized at `threshold` (one channel) or argmax over channel axis 1.
    token_classification: `[N, T, C]` class scores per token of an integer `[N, T]` input (a BERT-style
    NER/POS tagger); `scores` probabilities or logits; `mask` names the input (an attention mask, nonzero:
    a real token) that says which tokens count, None: every token counts.
    ctc: `[N, T, C]` per-step scores (`step_scores`), greedy-decoded, `blank` index.
    embedding: vectors compared by cosine; `top_k` neighbours for agreement.
    `metric`: an optional user metric hook, "module:function" (run by the compiler).
    `pad_value`: inputs may be padded with this value up to a static shape bucket (tasks/shapes.py;
    CTC pads with 0 unless told otherwise, other tasks only when this is set).
    `state`: a stateful model's state inputs and the outputs that carry their next value,
    ((input, output), ...); None: found by name (edge_agent/streams.py).
    """

    kind: str
    output: str | None = None
    metric: str | None = None
    scores: str = "probabilities"
    threshold: float | None = None
    positive_threshold: float = 0.5
    layout: str = "auto"
    box_format: str = "cxcywh"
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    ambiguity: tuple[float, float] | None = None  # per kind: detection (0.15, 0.4), dense (0.3, 0.7)
    max_boxes: int = 300
    blank: int = 0
    step_scores: str = "auto"
    top_k: int = 5
    pad_value: float | None = None
    state: tuple[tuple[str, str], ...] | None = None
    labels: tuple[str | int, ...] | None = None
    mask: str | None = None

    def __post_init__(self) -> None:
        if self.ambiguity is None:
            object.__setattr__(self, "ambiguity", DEFAULT_AMBIGUITY.get(self.kind, (0.15, 0.4)))
        if self.kind == "dense" and self.threshold is None:
            object.__setattr__(self, "threshold", 0.5)  # the map's binarization, not a confidence threshold
        _check(self)

    @property
    def band(self) -> tuple[float, float]:
        """`ambiguity` as checked: construction fills each kind's default, so it is never None here."""
        if self.ambiguity is None:
            raise TaskError("task.ambiguity: unset (a TaskSpec fills it when it is built)")
        return self.ambiguity

    # -- JSON --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fields of this kind, defaults included, so the manifest says everything."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.output is not None:
            out["output"] = self.output
        if self.metric is not None:
            out["metric"] = self.metric
        if self.pad_value is not None:
            out["pad_value"] = self.pad_value
        if self.state is not None:
            out["state"] = dict(self.state)
        for name in FIELDS[self.kind]:
            value = getattr(self, name)
            if name in ("threshold", "labels", "mask") and value is None:
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "task") -> "TaskSpec":
        """Parse a task object; refuses unknown fields and fields of another kind, by name."""
        if not isinstance(data, Mapping):
            raise TaskError(f"{where}: expected an object, got {type(data).__name__}")
        kind = data.get("kind")
        if kind not in KINDS:
            raise TaskError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        values = dict(data)
        # manifests written before task specs: classification carried `probabilities: bool`
        if kind == "classification" and "probabilities" in values:
            legacy = values.pop("probabilities")
            if not isinstance(legacy, bool):
                raise TaskError(f"{where}.probabilities: expected true or false")
            values.setdefault("scores", "probabilities" if legacy else "logits")
        allowed = set(_COMMON) | set(FIELDS[kind])
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise TaskError(
                f"{where}: unknown field(s) {', '.join(unknown)} for a {kind} task "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        if isinstance(values.get("state"), Mapping):
            values["state"] = tuple((str(k), str(v)) for k, v in values["state"].items())
        for name in ("ambiguity", "labels"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        try:
            return cls(**values)
        except TypeError as exc:  # pragma: no cover - guarded by the allowed set
            raise TaskError(f"{where}: {exc}") from exc

    @classmethod
    def from_json(cls, text: str, where: str = "task") -> "TaskSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{where}: not JSON ({exc})") from exc
        return cls.from_dict(data, where)

    def with_options(self, options: Mapping[str, str]) -> "TaskSpec":
        """This spec with `name=value` strings (the CLI's --task-option) parsed by field type."""
        changes: dict[str, Any] = {}
        allowed = set(FIELDS[self.kind]) | {"output", "metric", "pad_value", "state"}
        for name, text in options.items():
            if name not in allowed:
                raise TaskError(
                    f"task option {name!r} does not apply to a {self.kind} task (allowed: {', '.join(sorted(allowed))})"
                )
            changes[name] = _parse_option(name, text)
        return replace(self, **changes)

    @property
    def has_confidence(self) -> bool:
        """False for tasks with no notion of a sure answer: the agent keeps them on the edge."""
        return self.kind not in ("embedding", "regression", "custom")


def _parse_option(name: str, text: str) -> Any:
    kinds = {f.name: f.type for f in fields(TaskSpec)}
    hint = str(kinds[name])
    if name == "state":
        pairs = []
        for part in text.split(","):
            inp, sep, out = (p.strip() for p in part.partition(":"))
            if not sep or not inp or not out:
                raise TaskError(f"task option state={text!r}: expected INPUT:OUTPUT[,INPUT:OUTPUT...], e.g. state=h:hn")
            pairs.append((inp, out))
        return tuple(pairs)
    if name == "labels":
        parts = tuple(p.strip() for p in text.split(","))
        return tuple(int(p) for p in parts) if all(p.lstrip("-").isdigit() for p in parts) else parts
    try:
        if name == "ambiguity":
            low, high = (float(x) for x in text.split(","))
            return (low, high)
        if "int" in hint and "float" not in hint:
            return int(text)
        if "float" in hint:
            return float(text)
    except ValueError as exc:
        raise TaskError(f"task option {name}={text!r}: {exc}") from exc
    return text


def _unit(where: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (0.0 <= float(value) <= 1.0)
        or math.isnan(float(value))
    ):
        raise TaskError(f"{where}: {value!r} must be a number between 0 and 1")


def _check(spec: TaskSpec) -> None:
    if spec.kind not in KINDS:
        raise TaskError(f"task.kind: {spec.kind!r} is not one of {', '.join(KINDS)}")
    if spec.output is not None and (not isinstance(spec.output, str) or not spec.output):
        raise TaskError(f"task.output: {spec.output!r} must be an output name")
    if spec.metric is not None and (
        not isinstance(spec.metric, str) or spec.metric.count(":") != 1 or not all(spec.metric.split(":"))
    ):
        raise TaskError(f"task.metric: {spec.metric!r} must be 'module:function'")
    for name, choices in (
        ("scores", CLASSIFICATION_SCORES),
        ("layout", DETECTION_LAYOUTS),
        ("box_format", BOX_FORMATS),
        ("step_scores", PROBABILITY_FORMS),
    ):
        if getattr(spec, name) not in choices:
            raise TaskError(f"task.{name}: {getattr(spec, name)!r} is not one of {', '.join(choices)}")
    _unit("task.threshold", spec.threshold, optional=True)
    if spec.pad_value is not None and (
        isinstance(spec.pad_value, bool)
        or not isinstance(spec.pad_value, (int, float))
        or not math.isfinite(float(spec.pad_value))
    ):
        raise TaskError(f"task.pad_value: {spec.pad_value!r} must be a finite number")
    if spec.state is not None:
        if (
            not isinstance(spec.state, tuple)
            or not spec.state
            or not all(
                isinstance(p, tuple) and len(p) == 2 and all(isinstance(n, str) and n for n in p) for p in spec.state
            )
        ):
            raise TaskError(f"task.state: {spec.state!r} must map state input names to output names")
        inputs = [p[0] for p in spec.state]
        if len(set(inputs)) != len(inputs):
            raise TaskError(f"task.state: an input is named twice ({', '.join(inputs)})")
    _check_labels(spec.labels)
    if spec.kind == "token_classification" and spec.scores not in ("probabilities", "logits"):
        raise TaskError(f"task.scores: {spec.scores!r} is not one of probabilities, logits (token_classification)")
    if spec.mask is not None and (not isinstance(spec.mask, str) or not spec.mask):
        raise TaskError(f"task.mask: {spec.mask!r} must be an input name")
    for name in ("positive_threshold", "score_threshold", "iou_threshold"):
        _unit(f"task.{name}", getattr(spec, name))
    band = spec.ambiguity
    if not isinstance(band, tuple) or len(band) != 2:
        raise TaskError(f"task.ambiguity: {band!r} must be [low, high]")
    _unit("task.ambiguity[0]", band[0])
    _unit("task.ambiguity[1]", band[1])
    if band[0] > band[1]:
        raise TaskError(f"task.ambiguity: low {band[0]} is above high {band[1]}")
    for name, low in (("max_boxes", 1), ("blank", 0), ("top_k", 1)):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TaskError(f"task.{name}: {value!r} must be an integer >= {low}")


def _check_labels(labels: Any) -> None:
    if labels is None:
        return
    if (
        not isinstance(labels, tuple)
        or not labels
        or not (
            all(isinstance(x, str) and x for x in labels)
            or all(isinstance(x, int) and not isinstance(x, bool) for x in labels)
        )
    ):
        raise TaskError(
            f"task.labels: {labels!r} must be a non-empty list of class names (all strings or all integers)"
        )
    if len(set(labels)) != len(labels):
        raise TaskError(f"task.labels: a class is named twice in {list(labels)}")
