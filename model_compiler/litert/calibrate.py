"""Activation ranges for int8: run the float TFLite model on calibration samples and
record each tensor's min and max (the interpreter keeps intermediates when asked).

Running our own float model, rather than the ONNX one, covers the tensors the
lowering added (pads, transposes, HardSigmoid steps) with no name mapping.
"""

from __future__ import annotations

import logging
import warnings
from typing import Mapping

import numpy as np

from tandem.hardware_profiles.runtimes.litert import interpreter_class
from tandem.model_compiler.errors import CalibrationDataError
from tandem.model_compiler.litert.ir import Graph

logger = logging.getLogger(__name__)

Ranges = dict[int, tuple[float, float]]


METHODS = ("minmax", "percentile")
PERCENTILE = 99.99  # of each tensor's values, both tails (ONNX Runtime's default for its percentile method)
_KEEP_PER_RUN = 4096  # values kept per tensor and run for percentile: a uniform subsample bounds memory


def collect_ranges(
    model_bytes: bytes,
    graph: Graph,
    calib: Mapping[str, np.ndarray],
    input_names: list[str],
    max_samples: int = 256,
    method: str = "minmax",
) -> Ranges:
    """Range of every non-constant tensor over up to `max_samples` calibration samples, fed at the
    model's batch: min/max, or the 0.01th/99.99th percentiles (clips rare outliers, so the int8
    step is finer for the bulk of the values)."""
    if method not in METHODS:
        raise CalibrationDataError(f"calibration method {method!r} is not one of {', '.join(METHODS)} for LiteRT")
    Interpreter = interpreter_class()
    with warnings.catch_warnings():  # the "debugging only" warning: keeping intermediates is the point here
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=model_bytes, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    missing = [n for n in input_names if n not in calib]
    if missing:
        raise CalibrationDataError(f"calibration data lacks input(s) {missing} (has {sorted(calib)})")
    count = min(min(len(calib[n]) for n in input_names), max_samples)
    if count == 0:
        raise CalibrationDataError("calibration data is empty; int8 needs at least one sample")
    watch = [i for i, t in enumerate(graph.tensors) if t.data is None and t.dtype == "float32"]
    lo = {i: np.inf for i in watch}
    hi = {i: -np.inf for i in watch}
    kept: dict[int, list[np.ndarray]] = {i: [] for i in watch}
    rng = np.random.default_rng(0)
    batch = graph.tensors[graph.inputs[0]].shape[0] if graph.tensors[graph.inputs[0]].shape else 1
    for k in range(0, count, batch):
        for name, index in zip(input_names, graph.inputs):
            rows = np.arange(k, k + batch) % len(calib[name])  # a fixed batch > 1 wraps around the samples
            sample = np.asarray(calib[name][rows], dtype=np.float32).reshape(graph.tensors[index].shape)
            it.set_tensor(index, sample)
        it.invoke()
        for i in watch:
            value = it.get_tensor(i)
            lo[i] = min(lo[i], float(value.min()))
            hi[i] = max(hi[i], float(value.max()))
            if method == "percentile":
                flat = value.reshape(-1)
                kept[i].append(flat if flat.size <= _KEEP_PER_RUN else rng.choice(flat, _KEEP_PER_RUN, replace=False))
    logger.debug("collected %s ranges of %d tensors over %d samples", method, len(watch), count)
    if method == "minmax":
        return {i: (lo[i], hi[i]) for i in watch}
    out: Ranges = {}
    for i in watch:
        values = np.concatenate(kept[i])
        out[i] = (float(np.percentile(values, 100 - PERCENTILE)), float(np.percentile(values, PERCENTILE)))
    return out
