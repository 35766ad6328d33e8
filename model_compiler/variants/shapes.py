"""Static input shapes for the builders that fix them (LiteRT always; OpenVINO when a profile says
`static_shapes` or `--shapes` asks): one set of shapes per bucket, checked against the model.

A bucket may fix only the model's dynamic ('?') dims; without `--shapes` there is one bucket at
batch 1 with the other dynamic dims taken from the calibration samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from tandem.model_compiler.data import batch_axis
from tandem.model_compiler.errors import CompileError, VariantSkipped
from tandem.model_compiler.variants.calibration import model_input_shapes

if TYPE_CHECKING:
    from onnx import ModelProto


def bucket_shapes(
    model: ModelProto,
    calib: Mapping[str, np.ndarray],
    asked: Mapping[str, list[tuple[int, ...]]] | None,
    runtime: str = "LiteRT",
) -> list[dict[str, list[int]]]:
    """The static input shapes of each bucket: `--shapes` where given (checked against the model's
    rank and static dims), else one bucket at the calibration data's shape (static_shapes)."""
    dims_by_name = model_input_shapes(model)
    unknown = sorted(set(asked or ()) - set(dims_by_name))
    if unknown:
        raise CompileError(
            f"--shapes: {', '.join(unknown)} is not an input of the model (inputs: {', '.join(dims_by_name)})"
        )
    base = static_shapes(model, calib, skip=set(asked or ()), runtime=runtime)
    if not asked:
        return [base]
    count = len(next(iter(asked.values())))
    buckets = []
    for k in range(count):
        shapes = dict(base)
        for name, options in asked.items():
            shape, dims = list(options[k]), dims_by_name[name]
            if len(shape) != len(dims) or any(d > 0 and d != s for d, s in zip(dims, shape)):
                raise CompileError(
                    f"--shapes {name}={'x'.join(map(str, shape))}: the model's input is "
                    + "x".join("?" if d < 0 else str(d) for d in dims)
                    + " (a bucket may fix only its dynamic '?' dimensions)"
                )
            shapes[name] = shape
        buckets.append(shapes)
    return buckets


def static_shapes(
    model: ModelProto, calib: Mapping[str, np.ndarray], skip: set[str] | None = None, runtime: str = "LiteRT"
) -> dict[str, list[int]]:
    """Input shapes for lowering: the model's static dims, batch 1 when dynamic, other
    dynamic dims from the calibration samples (the default bucket when --shapes is not given)."""
    shapes = {}
    for name, dims in model_input_shapes(model).items():
        if name in (skip or ()):
            shapes[name] = list(dims)  # --shapes fixes it per bucket
            continue
        sample = np.asarray(calib[name]).shape if name in calib else None
        axis = _bucket_batch_axis(dims)
        out = []
        for k, d in enumerate(dims):
            if d > 0:
                out.append(d)
            elif k == axis:
                out.append(1)
            elif sample is not None and len(sample) == len(dims):
                out.append(int(sample[k]))
            else:
                raise VariantSkipped(
                    f"input {name!r} has a dynamic dimension {k} and no calibration sample to fix it; "
                    f"{runtime} needs static shapes here: give them with --shapes "
                    f"{name}=" + "x".join(str(d) if d > 0 else ("1" if j == 0 else "D") for j, d in enumerate(dims))
                )
        shapes[name] = out
    return shapes


def _bucket_batch_axis(dims: list[int]) -> int:
    """The axis a bucket builds at 1 and never fits: the first dynamic one (a state [2, N, 128]: axis 1),
    but axis 0 when it is 1 already (an image exported as [1, 3, H, W] keeps H and W bucketable)."""
    if dims and dims[0] == 1:
        return 0
    return batch_axis(dims) or 0


def dynamic_axes(model: ModelProto) -> dict[str, list[int]]:
    """Per input, the dynamic axes but its batch axis (the first dynamic one, else 0: a state [2, N, 128]
    has none): the ones a bucket fixes and a request may be padded along."""
    return {
        name: [k for k, d in enumerate(dims) if k != _bucket_batch_axis(dims) and d < 0]
        for name, dims in model_input_shapes(model).items()
    }


def bucket_list(files: list, buckets: list[dict[str, list[int]]], dynamic: Mapping[str, list[int]]) -> list[dict]:
    """BuiltVariant.buckets: each file with the shapes of the inputs it fixes; empty when no input
    has a dynamic dim past the batch (one file that takes the shapes the model declares)."""
    out = [
        {"file": str(f), "inputs": {n: list(s) for n, s in shapes.items() if any(dynamic.get(n, ()))}}
        for f, shapes in zip(files, buckets)
    ]
    return out if any(b["inputs"] for b in out) else []


def fmt_shapes(shapes: Mapping[str, list[int]]) -> str:
    return ", ".join(f"{name}={list(dims)}" for name, dims in shapes.items())


def bucket_suffix(buckets: list[dict[str, list[int]]], shapes: Mapping[str, list[int]]) -> str:
    """A file-name suffix telling buckets apart ('' for a single bucket)."""
    return "" if len(buckets) == 1 else "-" + "_".join("x".join(map(str, s)) for s in shapes.values())
