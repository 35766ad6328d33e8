"""Validate a built variant against the FP32 reference on held-out data.

Agreement, accuracy (when labels are given), output error, size and host timing:
the figures the per-profile choice and the report are made from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.hardware_profiles.runtimes import RuntimeSession, RuntimeUnavailableError, load_session
from tandem.model_compiler.data import Dataset
from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.measure import batch_of, measure_latency, measure_throughput

VALIDATION_CHUNK = 64


@dataclass(frozen=True)
class Task:
    """How outputs are compared: classification (argmax of `output_index`) or dense maps."""

    kind: str  # "classification" | "dense"
    output_index: int = 0
    dense_threshold: float = 0.5
    probabilities: bool = True  # classification output already sums to 1

    def to_dict(self, output_name: str) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "output": output_name}
        if self.kind == "classification":
            data["probabilities"] = self.probabilities
        else:
            data["threshold"] = self.dense_threshold
        return data


def infer_task(reference_outputs: list[np.ndarray], dense_threshold: float = 0.5) -> Task:
    """Classification when the first output is (N, C>=2); otherwise a dense map."""
    first = reference_outputs[0]
    if first.ndim == 2 and first.shape[1] >= 2:
        row_sums = first.sum(axis=1)
        probs = bool(np.all(first >= -1e-6) and np.allclose(row_sums, 1.0, atol=1e-3))
        return Task("classification", probabilities=probs)
    return Task("dense", dense_threshold=dense_threshold)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confidences(task: Task, output: np.ndarray) -> np.ndarray:
    """Max class probability per sample (softmax applied to logits first)."""
    probs = output if task.probabilities else softmax(output.astype(np.float64))
    return probs.max(axis=1)


def run_dataset(session: RuntimeSession, data: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run all samples, in chunks the variant accepts (batch 1 for a fixed-batch model)."""
    first_dim = session.inputs[0].shape[0] if session.inputs and session.inputs[0].shape else -1
    chunk = first_dim if first_dim and first_dim > 0 else VALIDATION_CHUNK
    n = len(next(iter(data.values())))
    parts: list[list[np.ndarray]] = []
    for start in range(0, n, chunk):
        feeds = {name: np.ascontiguousarray(arr[start:start + chunk]) for name, arr in data.items()}
        outs = session.run(feeds)
        parts.append([np.asarray(o) for o in outs])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def compare_outputs(task: Task, reference: list[np.ndarray], outputs: list[np.ndarray],
                    labels: np.ndarray | None) -> dict[str, float]:
    """Agreement and error of `outputs` against `reference` (and accuracy against labels)."""
    ref = reference[task.output_index].astype(np.float64)
    out = np.asarray(outputs[task.output_index], dtype=np.float64).reshape(ref.shape)
    diff = np.abs(ref - out)
    metrics: dict[str, float] = {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean())}
    if task.kind == "classification":
        pred = out.argmax(axis=1)
        metrics["agreement"] = float((pred == ref.argmax(axis=1)).mean())
        if labels is not None:
            metrics["accuracy"] = float((pred == labels).mean())
        metrics["mean_confidence"] = float(confidences(task, out).mean())
    else:
        thr = task.dense_threshold
        metrics["agreement"] = float(((ref > thr) == (out > thr)).mean())
    return metrics


def file_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def weight_bytes(runtime: str, files: list[Path]) -> int:
    """Bytes of weights: ONNX initializers, OpenVINO's .bin, or the whole .tflite (mostly buffers)."""
    if runtime == "onnxruntime":
        import onnx

        from tandem.model_compiler.model_io import weight_bytes as onnx_weight_bytes

        return onnx_weight_bytes(onnx.load(str(files[0])))
    if runtime == "openvino":
        return sum(f.stat().st_size for f in files if f.suffix == ".bin")
    return file_bytes(files)


def validate_variant(runtime: str, files: list[Path], session_options: dict[str, Any], task: Task,
                     reference: list[np.ndarray], val: Dataset, *, timing: bool = True,
                     timing_seconds: float = 2.0) -> tuple[dict[str, float], list[np.ndarray]]:
    """Load the variant, compare it on `val`, time it; returns (metrics, outputs on val).

    Raises VariantSkipped when the runtime cannot load or run it, so one broken
    variant never stops the others.
    """
    started = time.perf_counter()
    try:
        session = load_session(runtime, files[0], **session_options)
    except RuntimeUnavailableError as exc:
        raise VariantSkipped(f"does not load: {exc}") from exc
    load_ms = (time.perf_counter() - started) * 1000.0
    try:
        outputs = run_dataset(session, val.inputs)
    except Exception as exc:  # a runtime's own error types vary; the message is what matters
        raise VariantSkipped(f"fails on validation data: {type(exc).__name__}: {exc}") from exc
    metrics = compare_outputs(task, reference, outputs, val.labels)
    metrics.update(file_bytes=file_bytes(files), weight_bytes=weight_bytes(runtime, files), load_ms=round(load_ms, 2))
    if timing:
        lat = measure_latency(session, batch_of(val.inputs, 1), max_seconds=timing_seconds)
        metrics.update(latency_p50_ms=lat.p50_ms, latency_p95_ms=lat.p95_ms)
        metrics["throughput_b8"] = measure_throughput(session, batch_of(val.inputs, 8), max_seconds=timing_seconds)
    session.close()
    return metrics, outputs
