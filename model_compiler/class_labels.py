"""A classifier's class labels: found in the model (a ZipMap's or an ai.onnx.ml classifier's), carried in
the task, and used to read validation labels given as the class names themselves (scikit-learn's `y`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tandem.model_compiler.classifier_outputs import OutputRewrite
from tandem.model_compiler.data import Dataset
from tandem.model_compiler.errors import CalibrationDataError, CompileError
from tandem.model_compiler.validate import Task
from tandem.tasks import class_probabilities


def with_class_labels(task: Task, rewrite: OutputRewrite, reference: list[np.ndarray]) -> Task:
    """The task with the model's class labels when it names none; stated labels must count the classes."""
    if task.kind != "classification" or task.spec.scores == "multi_label":
        return task
    spec = task.spec
    if spec.labels is None and rewrite.labels and spec.output == (rewrite.probabilities or spec.output):
        spec = replace(spec, labels=tuple(rewrite.labels))
    if spec.labels is None:
        return task
    classes = class_probabilities(spec, reference[task.output_index]).shape[1]
    if len(spec.labels) != classes:
        raise CompileError(
            f"task labels {list(spec.labels)} name {len(spec.labels)} classes; output {spec.output!r} scores "
            f"{classes} (--task-option labels=... must list one per class, in score order)"
        )
    return Task(spec, task.output_index, task.budgets, task.reason)


def labels_as_indices(val: Dataset, task: Task) -> Dataset:
    """Validation `y` as class indices: class names (strings, or integer labels other than 0..K-1) are
    looked up in the task's labels; plain indices (integers, when the labels are names or 0..K-1) pass
    unchanged."""
    y, labels = val.labels, task.spec.labels if task.kind == "classification" else None
    if y is None:
        return val
    # integer y is class indices unless the labels are integers other than 0..K-1 (then it is those labels)
    identity = labels is None or list(labels) == list(range(len(labels))) or isinstance(labels[0], str)
    if y.dtype.kind in "iu" and identity:
        return val
    where = f"validation data {val.source}: 'y'"
    if labels is None:
        raise CalibrationDataError(
            f"{where} holds {y.dtype} class names but the task names no labels to read them by; give integer "
            "class indices, or state the names in score order with --task-option labels=a,b,c"
        )
    if y.dtype.kind == "U" and not all(isinstance(x, str) for x in labels):
        raise CalibrationDataError(f"{where} holds strings; the model's class labels are integers {list(labels)}")
    index = {label: i for i, label in enumerate(labels)}
    values = y.tolist()
    unknown = sorted({v for v in values if v not in index}, key=str)
    if unknown:
        shown = ", ".join(repr(v) for v in unknown[:10]) + (
            f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        )
        raise CalibrationDataError(f"{where} holds {shown}, not among the model's class labels {list(labels)}")
    return replace(val, labels=np.array([index[v] for v in values], dtype=np.int64))
