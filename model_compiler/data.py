"""Calibration and validation data: .npz files checked against the model's inputs.

An .npz holds one array per model input, named like the input; a single-input model
may use the key `x` instead. Optional `y` holds integer labels (validation only), or class names when the
task names its classes (model_compiler/class_labels.py).
Samples lie along each input's batch axis: the first dynamic axis of the model's input
(a streaming state `[2, N, 128]` is batched on axis 1), axis 0 when every axis is fixed,
none for a 0-d scalar input (one value, fed with every batch).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

# the sample-axis rules live with the runtimes (the device's self-test uses them too); re-exported here
from tandem.hardware_profiles.runtimes.chunked import Axes as Axes
from tandem.hardware_profiles.runtimes.chunked import batch_axis as batch_axis
from tandem.hardware_profiles.runtimes.chunked import sample_count as sample_count
from tandem.hardware_profiles.runtimes.chunked import take as take
from tandem.model_compiler.errors import CalibrationDataError
from tandem.protocols.manifest import TensorSpec

LABEL_KEY = "y"
SINGLE_INPUT_KEY = "x"


def whole_run(inputs: Sequence[TensorSpec]) -> int:
    """Rows along the batch axis one run takes when an input fixes it (a fixed batch, or no batch axis:
    [3, 32, 32] takes 3), else 1; a slice of the data (the golden set) must be a multiple of it."""
    for spec in inputs:
        axis = batch_axis(spec.shape)
        if axis is not None and spec.shape[axis] > 0:
            return int(spec.shape[axis])
    return 1


@dataclass
class Dataset:
    """Input arrays by model input name, plus optional labels; samples lie along `axes[name]`
    (0 when not listed; None for a scalar input, the same for every sample)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    axes: dict[str, int | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return sample_count(self.inputs, self.axes)

    def _slice(self, start: int, stop: int | None) -> "Dataset":
        return Dataset(
            {k: take(v, self.axes.get(k, 0), start, stop) for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[start:stop],
            self.source,
            dict(self.axes),
        )

    def head(self, n: int) -> "Dataset":
        return self._slice(0, n)

    def split(self, n: int) -> tuple["Dataset", "Dataset"]:
        """The first n samples and the rest."""
        return self._slice(0, n), self._slice(n, None)

    def samples_first(self) -> dict[str, np.ndarray]:
        """Batched inputs with their samples on axis 0 (for per-sample summaries); scalars left out."""
        out: dict[str, np.ndarray] = {}
        for k, v in self.inputs.items():
            axis = self.axes.get(k, 0)
            if axis is not None:
                out[k] = np.moveaxis(v, axis, 0)
        return out


def load_dataset(path: str | Path, inputs: list[TensorSpec], role: str) -> Dataset:
    """Load `path` and check every array against `inputs` (names, rank, fixed dims, dtype)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationDataError(f"{role} data {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CalibrationDataError(f"{role} data {path}: not a readable .npz file ({exc})") from exc

    labels = arrays.pop(LABEL_KEY, None)
    if len(inputs) == 1 and inputs[0].name not in arrays and SINGLE_INPUT_KEY in arrays:
        arrays = {inputs[0].name: arrays.pop(SINGLE_INPUT_KEY), **arrays}
    missing = [spec.name for spec in inputs if spec.name not in arrays]
    if missing:
        raise CalibrationDataError(
            f"{role} data {path}: no array for model input(s) {', '.join(missing)} "
            f"(found keys: {', '.join(sorted(arrays)) or 'none'}; a single-input model may use 'x')"
        )
    checked: dict[str, np.ndarray] = {}
    axes: dict[str, int | None] = {}
    count = None
    for spec in inputs:
        arr = arrays[spec.name]
        axis = axes[spec.name] = batch_axis(spec.shape)
        where = f"{role} data {path}: input {spec.name!r}"
        expected = np.dtype(spec.dtype)
        if arr.dtype != expected:
            if arr.dtype.kind == "f" and expected.kind == "f":
                arr = arr.astype(expected)
            else:
                raise CalibrationDataError(f"{where}: dtype {arr.dtype} does not match the model's {expected}")
        if arr.ndim != len(spec.shape):
            raise CalibrationDataError(
                f"{where}: shape {arr.shape} has rank {arr.ndim}, the model expects rank {len(spec.shape)} {tuple(spec.shape)}"
            )
        for i, (got, want) in enumerate(zip(arr.shape, spec.shape)):
            if i != axis and want > 0 and got != want:
                raise CalibrationDataError(
                    f"{where}: shape {arr.shape} differs from the model's {tuple(spec.shape)} on axis {i}"
                )
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CalibrationDataError(f"{where}: contains NaN or infinite values")
        checked[spec.name] = np.asarray(arr, order="C")  # not ascontiguousarray: it turns a 0-d scalar into [1]
        if axis is None:
            continue  # a scalar: one value for every sample
        _check_whole_runs(arr, spec, axis, where)
        if count is None:
            count = arr.shape[axis]
        elif arr.shape[axis] != count:
            raise CalibrationDataError(
                f"{where}: {arr.shape[axis]} samples along axis {axis}, other inputs have {count}"
            )
    if count is None:
        count = 1  # every input is a scalar: one sample
    if not count:
        raise CalibrationDataError(f"{role} data {path}: holds no samples")
    if labels is not None:
        labels = np.asarray(labels)
        per_token = labels.ndim == 2 and labels.dtype.kind in "iu"  # [N, T]: a token classifier's labels
        if (labels.ndim != 1 and not per_token) or labels.shape[0] != count or labels.dtype.kind not in "iuU":
            raise CalibrationDataError(
                f"{role} data {path}: 'y' must be {count} integer labels (or class names), or [{count}, T] "
                f"integer labels per token, got shape {labels.shape} dtype {labels.dtype}"
            )
    return Dataset(checked, labels, str(path), axes)


def _check_whole_runs(arr: np.ndarray, spec: TensorSpec, axis: int, where: str) -> None:
    """An input with no dynamic axis is fed its fixed size along axis 0 at a time (a fixed batch, or no batch
    axis at all: [3, 32, 32]); data that is not a whole number of those would end in the runtime's shape error."""
    fixed = spec.shape[axis]
    if fixed > 1 and arr.shape[axis] % fixed:
        one = tuple(spec.shape)
        two = tuple(2 * d if i == axis else d for i, d in enumerate(spec.shape))
        raise CalibrationDataError(
            f"{where}: {arr.shape[axis]} along axis {axis}, not a multiple of the model's fixed {fixed} there: the "
            f"model's shape {one} has no dynamic axis, so each run takes a whole {one}; give whole inputs end to end "
            f"along axis {axis} ({one} for one, {two} for two), or export the model with a dynamic batch axis"
        )


def check_label_range(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Refuse labels outside [0, num_classes): a negative one would silently index from the end,
    a too-large one would end in an IndexError deep inside calibration."""
    bad = np.unique(labels[(labels < 0) | (labels >= num_classes)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (f" and {bad.size - 10} more" if bad.size > 10 else "")
        raise CalibrationDataError(
            f"{where}: label values {shown} in 'y' are out of range for the model's {num_classes} classes "
            f"(valid: 0 to {num_classes - 1})"
        )
