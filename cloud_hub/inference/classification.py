"""Triton's classification extension: an output requested with the parameter `classification: k` is answered
as its k highest-scoring classes per row, a BYTES tensor of "value:index" (":label" added where the model's
task names its classes), best first, as Triton answers it (tritonclient's `class_count`). Pure numpy: the
servicer reads the request's parameter here and turns a model output into the answer here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PARAMETER = "classification"


class ClassificationError(ValueError):
    """The classification parameter, or the output it asks of, cannot be answered; the message names the output."""


def class_count(output: str, parameters: Mapping[str, Any]) -> int | None:
    """The k a requested output's parameters ask for (None: the raw output); ClassificationError if it is not
    a positive integer."""
    if PARAMETER not in parameters:
        return None
    param = parameters[PARAMETER]
    kind = param.WhichOneof("parameter_choice")
    value: Any = getattr(param, kind) if kind else None
    if kind in ("int64_param", "uint64_param") and value >= 1:
        return int(value)
    raise ClassificationError(
        f"output {output!r}: parameter {PARAMETER!r} must be a positive integer (the number of top classes), "
        f"got {value!r}"
    )


def top_classes(output: str, scores: np.ndarray, k: int, labels: Sequence[str | int] | None = None) -> np.ndarray:
    """The top `k` of each row of `scores` (axis 0 is the batch; a 1-D output is one row) as an object array
    of b"value:index[:label]", shape [rows, min(k, classes)] ([min(k, classes)] for a 1-D output). Ties keep
    the lower index first. Values print as C's %f, as Triton's std::to_string does."""
    array = np.asarray(scores)
    if array.dtype.kind not in "fiub":
        raise ClassificationError(f"output {output!r}: a {array.dtype} output has no classes to rank")
    if array.ndim == 0:
        raise ClassificationError(f"output {output!r}: a scalar output has no classes to rank")
    rows = array.reshape(1, -1) if array.ndim == 1 else array.reshape(array.shape[0], int(np.prod(array.shape[1:])))
    keep = min(k, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :keep]
    text = "{:f}:{}" if array.dtype.kind == "f" else "{}:{}"
    out = np.empty(order.shape, dtype=object)
    for r, indices in enumerate(order):
        for c, index in enumerate(indices):
            entry = text.format(rows[r, index].item(), int(index))
            if labels is not None and index < len(labels):
                entry += f":{labels[index]}"
            out[r, c] = entry.encode()
    return out.reshape(keep) if array.ndim == 1 else out


def labels_of(task: Mapping[str, Any] | None, outputs: Sequence[str]) -> dict[str, tuple[str | int, ...]]:
    """The class names a manifest's classification task gives, by output name (its `output`, else the first);
    empty when the task names none or cannot be read (the answer is then "value:index", as Triton's without
    a label file)."""
    from tandem.tasks import TaskError, TaskSpec

    try:
        spec = TaskSpec.from_dict(task or {})
    except TaskError:
        return {}
    if spec.kind != "classification" or not spec.labels or not outputs:
        return {}
    return {spec.output or outputs[0]: spec.labels}
