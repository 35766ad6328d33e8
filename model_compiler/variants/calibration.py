"""Calibration data checks and batching shared by the INT8 builders.

Bad calibration data must become a skipped variant with a reason a person can act
on, not a quantizer traceback deep inside ONNX Runtime or NNCF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np

from tandem.model_compiler.data import batch_axis, sample_count, take
from tandem.model_compiler.errors import VariantSkipped

if TYPE_CHECKING:
    from onnx import ModelProto

MAX_CALIB_BATCH = 8


def model_input_shapes(model: ModelProto) -> dict[str, list[int]]:
    """Graph inputs (initializers excluded) -> dims, -1 where dynamic."""
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims]
    return shapes


def _input_kinds(model: ModelProto) -> dict[str, str]:
    """Graph inputs -> numpy dtype kind ('f', 'i', 'u', 'b'); inputs of unknown type are left out."""
    from onnx import helper

    kinds: dict[str, str] = {}
    for value in model.graph.input:
        try:
            kinds[value.name] = np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).kind
        except (KeyError, TypeError, ValueError):
            continue
    return kinds


def check_calibration(model: ModelProto, calib: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """Check calib against the model's inputs; returns the input shapes. Raises VariantSkipped."""
    shapes = model_input_shapes(model)
    kinds = _input_kinds(model)
    missing = [name for name in shapes if name not in calib]
    if missing:
        raise VariantSkipped(
            f"calibration data lacks input(s) {', '.join(map(repr, missing))} "
            f"(has {', '.join(map(repr, calib)) or 'nothing'})"
        )
    counts = set()
    for name, dims in shapes.items():
        arr = np.asarray(calib[name])
        # integer inputs (token ids, indices) are not quantized themselves; the float activations
        # they lead to (embeddings, everything downstream) are calibrated on these real samples
        want = kinds.get(name)
        if arr.dtype.kind not in "fiub" or (want == "f") != (arr.dtype.kind == "f"):
            needs = "float samples for a float input" if want == "f" else "samples of the input's integer type"
            raise VariantSkipped(f"calibration input {name!r} is {arr.dtype}; INT8 calibration needs {needs}")
        axis = batch_axis(dims)
        if arr.ndim != len(dims) or any(
            i != axis and d > 0 and d != a for i, (d, a) in enumerate(zip(dims, arr.shape))
        ):
            raise VariantSkipped(
                f"calibration input {name!r} has shape {list(arr.shape)}; the model expects {dims} "
                f"(samples on axis {axis}, -1 = any)"
            )
        if axis is None:
            continue  # a scalar input: one value fed with every batch
        if arr.shape[axis] == 0:
            raise VariantSkipped(f"calibration input {name!r} has no samples")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise VariantSkipped(f"calibration input {name!r} contains NaN or infinite values")
        counts.add(arr.shape[axis])
    if len(counts) > 1:
        raise VariantSkipped(f"calibration inputs have different sample counts {sorted(counts)}")
    return shapes


def iter_batches(
    calib: Mapping[str, np.ndarray], shapes: Mapping[str, list[int]], max_batch: int = MAX_CALIB_BATCH
) -> Iterator[dict[str, np.ndarray]]:
    """Calibration feeds in batches: the model's fixed batch size if it has one (samples
    repeated when there are fewer), else chunks of up to max_batch."""
    axes = {name: batch_axis(dims) for name, dims in shapes.items()}
    fixed = sorted({dims[axis] for name, dims in shapes.items() if (axis := axes[name]) is not None and dims[axis] > 0})
    n = sample_count({name: np.asarray(calib[name]) for name in shapes}, axes)
    if fixed:
        batch = fixed[0]
        reps = -(-batch // n)
        data = {
            name: np.concatenate([np.asarray(calib[name])] * reps, axis=axes[name])
            if reps > 1 and axes[name] is not None
            else np.asarray(calib[name])
            for name in shapes
        }
        stop = max(sample_count(data, axes) - batch + 1, 1)
    else:
        batch, data, stop = max_batch, {name: np.asarray(calib[name]) for name in shapes}, n
    for start in range(0, stop, batch):
        yield {name: np.asarray(take(arr, axes[name], start, start + batch), order="C") for name, arr in data.items()}
