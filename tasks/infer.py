"""Which task a model performs, read from its outputs where that is unambiguous.

Returns the spec and the reason as a sentence the compiler prints; when the outputs
could mean two things the answer says so and names the `--task` that settles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from tandem.tasks.spec import TaskSpec


@dataclass(frozen=True)
class Inferred:
    spec: TaskSpec
    reason: str
    certain: bool


def _unit(x: np.ndarray) -> bool:
    return bool(x.size and np.nanmin(x) >= -1e-6 and np.nanmax(x) <= 1.0 + 1e-6)


def _sums_to_one(x: np.ndarray, axis: int) -> bool:
    return _unit(x) and bool(np.allclose(x.sum(axis=axis), 1.0, atol=2e-2))


def _labels_beside_probabilities(names: Sequence[str], outputs: Sequence[np.ndarray]) -> Inferred | None:
    """skl2onnx's classifiers output the label first ([N] int64), the probabilities second."""
    first = np.asarray(outputs[0])
    if first.ndim != 1 or first.dtype.kind not in "iu":
        return None
    for name, out in zip(names[1:], outputs[1:]):
        x = np.asarray(out)
        if x.ndim == 2 and x.shape[0] == first.shape[0] and x.shape[1] >= 2 and _sums_to_one(x, 1):
            return Inferred(
                TaskSpec("classification", output=name, scores="probabilities"),
                f"output {names[0]!r} is [N] integer labels and output {name!r} is [N, {x.shape[1]}] with every "
                "row summing to 1: class probabilities (a scikit-learn classifier's label and probabilities)",
                True,
            )
    return None


def token_inputs(inputs: Mapping[str, np.ndarray], steps: int) -> tuple[str | None, str | None]:
    """(token ids, attention mask) among the model's inputs for an output of `steps` per row: the ids are an
    integer [N, steps] input not named like a mask, the mask an [N, steps] input whose name holds "mask"
    (both None when no integer input has that length: the steps are not tokens)."""
    ids = mask = None
    for name, arr in inputs.items():
        x = np.asarray(arr)
        if x.ndim != 2 or x.shape[1] != steps:
            continue
        if "mask" in name.lower():
            mask = mask or name
        elif x.dtype.kind in "iu":
            ids = ids or name
    return ids, (mask if ids is not None else None)


def infer_task(
    names: Sequence[str],
    outputs: Sequence[np.ndarray],
    producers: Sequence[str | None] = (),
    inputs: Mapping[str, np.ndarray] | None = None,
) -> Inferred:
    """The task of the first output, from its FP32 values on real `inputs` (and the op that produced it);
    a first output of [N] integer labels beside [N, K] probabilities (scikit-learn's pair) reads the latter.
    An [N, T, C] output beside an integer [N, T] input (token ids) is per-token classification, not CTC."""
    paired = _labels_beside_probabilities(names, outputs)
    if paired is not None:
        return paired
    name, x = names[0], np.asarray(outputs[0])
    op = producers[0] if producers else None
    shape = "[N" + "".join(f", {d}" for d in x.shape[1:]) + "]"
    where = f"output {name!r} is {shape}"
    fixed = " (state --task to change it)"
    if x.ndim == 2 and x.shape[1] == 1:
        if op == "Sigmoid" or _unit(x):
            return Inferred(
                TaskSpec("classification", output=name, scores="sigmoid"),
                f"{where} with values in [0, 1]"
                + (" from a Sigmoid" if op == "Sigmoid" else "")
                + ": one sigmoid probability per row, binary classification"
                + fixed,
                op == "Sigmoid",
            )
        return Inferred(
            TaskSpec("regression", output=name),
            f"{where} with values outside [0, 1]: one number per row, read as regression"
            " (--task classification --task-option scores=sigmoid if it is a binary logit)",
            False,
        )
    if x.ndim == 2:
        if _sums_to_one(x, 1):
            return Inferred(
                TaskSpec("classification", output=name, scores="probabilities"),
                f"{where} and every row sums to 1: class probabilities",
                True,
            )
        if op == "Sigmoid" or _unit(x):
            return Inferred(
                TaskSpec("classification", output=name, scores="multi_label"),
                f"{where} with values in [0, 1] that do not sum to 1: independent sigmoids, "
                "multi-label classification" + fixed,
                op == "Sigmoid",
            )
        norms = np.linalg.norm(x.astype(np.float64), axis=1)
        if x.shape[1] >= 16 and np.allclose(norms, 1.0, atol=1e-2):
            return Inferred(
                TaskSpec("embedding", output=name),
                f"{where} and every row has unit L2 norm: an embedding" + fixed,
                True,
            )
        return Inferred(
            TaskSpec("classification", output=name, scores="logits"),
            f"{where} with unbounded values: read as class logits"
            " (--task embedding or --task regression if they are not)",
            False,
        )
    if x.ndim == 3:
        small, large = sorted(x.shape[1:])
        ids, mask = token_inputs(inputs or {}, x.shape[1])
        if ids is not None and x.shape[2] >= 2:
            probs = _sums_to_one(x, 2)
            return Inferred(
                TaskSpec("token_classification", output=name, scores="probabilities" if probs else "logits", mask=mask),
                f"{where} and integer input {ids!r} has the same {x.shape[1]} steps: per-token class "
                + ("probabilities" if probs else "logits")
                + ", read as token classification"
                + (f", tokens counted where {mask!r} is nonzero" if mask else ", every token counted")
                + " (--task ctc if the steps are a CTC sequence)",
                True,
            )
        if _sums_to_one(x, 2) and x.shape[2] >= 2:
            return Inferred(
                TaskSpec("ctc", output=name, blank=0, step_scores="probabilities"),
                f"{where} and each of the {x.shape[1]} steps sums to 1 over {x.shape[2]} classes: "
                "per-step probabilities, read as CTC sequence recognition with blank 0"
                " (--task-option blank=N if the blank is elsewhere)",
                True,
            )
        coords = x[:, :4, :] if x.shape[1] < x.shape[2] else x[:, :, :4]
        if small >= 5 and large >= 8 * small and float(np.abs(coords).max()) > 1.5:
            layout = "channels_first" if x.shape[1] < x.shape[2] else "anchors_first"
            return Inferred(
                TaskSpec("detection", output=name, layout=layout),
                f"{where}: {large} anchors of 4 box coordinates + {small - 4} class scores "
                f"({layout}), read as a YOLO-style detection head decoded with NMS" + fixed,
                True,
            )
    if x.ndim == 4:
        if x.shape[1] == 1 and _unit(x):
            return Inferred(
                TaskSpec("dense", output=name, threshold=0.5),
                f"{where} with values in [0, 1]: a one-channel probability map (segmentation / text "
                "detection), binarized at 0.5 (--task-option threshold=T to change)",
                True,
            )
        if x.shape[1] > 1 and x.shape[2] > 1 and x.shape[3] > 1:
            return Inferred(
                TaskSpec("dense", output=name),
                f"{where}: per-pixel scores over {x.shape[1]} classes, read as segmentation "
                "(argmax over axis 1)" + fixed,
                False,
            )
    return Inferred(
        TaskSpec("custom", output=name),
        f"{where}: no task reads this shape unambiguously; validated as custom (output error only, "
        "no task gate). State --task and its options, or a --task-option metric=module:function hook",
        False,
    )
