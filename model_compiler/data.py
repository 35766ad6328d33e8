"""Calibration and validation data: .npz files checked against the model's inputs.

An .npz holds one array per model input, named like the input; a single-input model
may use the key `x` instead. Optional `y` holds integer labels (validation only).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.model_compiler.errors import CalibrationDataError
from tandem.protocols.manifest import TensorSpec

LABEL_KEY = "y"
SINGLE_INPUT_KEY = "x"


@dataclass
class Dataset:
    """Input arrays by model input name, plus optional labels; axis 0 is the sample."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int) -> "Dataset":
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[:n], self.source)

    def split(self, n: int) -> tuple["Dataset", "Dataset"]:
        """The first n samples and the rest."""
        first = Dataset({k: v[:n] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[:n], self.source)
        rest = Dataset({k: v[n:] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[n:], self.source)
        return first, rest


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
    count = None
    for spec in inputs:
        arr = arrays[spec.name]
        where = f"{role} data {path}: input {spec.name!r}"
        expected = np.dtype(spec.dtype)
        if arr.dtype != expected:
            if arr.dtype.kind == "f" and expected.kind == "f":
                arr = arr.astype(expected)
            else:
                raise CalibrationDataError(f"{where}: dtype {arr.dtype} does not match the model's {expected}")
        if arr.ndim != len(spec.shape):
            raise CalibrationDataError(f"{where}: shape {arr.shape} has rank {arr.ndim}, the model expects rank {len(spec.shape)} {tuple(spec.shape)}")
        for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
            if axis > 0 and want > 0 and got != want:
                raise CalibrationDataError(f"{where}: shape {arr.shape} differs from the model's {tuple(spec.shape)} on axis {axis}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise CalibrationDataError(f"{where}: contains NaN or infinite values")
        if count is None:
            count = arr.shape[0]
        elif arr.shape[0] != count:
            raise CalibrationDataError(f"{where}: {arr.shape[0]} samples, other inputs have {count}")
        checked[spec.name] = np.ascontiguousarray(arr)
    if not count:
        raise CalibrationDataError(f"{role} data {path}: holds no samples")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != count or labels.dtype.kind not in "iu":
            raise CalibrationDataError(f"{role} data {path}: 'y' must be {count} integer labels, got shape {labels.shape} dtype {labels.dtype}")
    return Dataset(checked, labels, str(path))
