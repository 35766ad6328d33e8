"""Validate a built variant against the FP32 reference on held-out data.

The task's own figures and gate (tandem.tasks), output error, size and host timing:
the figures the per-profile choice and the report are made from.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tandem.hardware_profiles.runtimes import RuntimeSession, RuntimeUnavailableError, chunked, load_session
from tandem.model_compiler.data import Axes, Dataset
from tandem.model_compiler.errors import CompileError, VariantSkipped
from tandem.protocols.manifest import TensorSpec
from tandem.tasks import (
    TaskError,
    TaskSpec,
    budgets_for,
    confidence_measure,
    detections,
    gate,
    infer_task,
    task_confidence,
    task_metrics,
)
from tandem.tasks.infer import token_inputs
from tandem.model_compiler.measure import batch_of, measure_latency, measure_throughput
from tandem.tasks.shapes import Bucket, BucketedSession, fit_to, pad_value

VALIDATION_CHUNK = 64


@dataclass(frozen=True)
class Task:
    """The model's task (tandem.tasks spec), which output it reads, and the budgets its gate holds."""

    spec: TaskSpec
    output_index: int = 0
    budgets: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def probabilities(self) -> bool:
        """Classification output already sums to 1 (per-variant calibration works on it as such)."""
        return self.spec.scores == "probabilities"

    @property
    def calibratable(self) -> bool:
        """Softmax classifiers get a per-variant temperature and threshold, tasks with their own
        confidence (sigmoid, multi-label, detection, dense, CTC) a per-variant threshold on it
        (model_compiler/confidence.py); embeddings, regression and custom tasks have none."""
        return (
            self.kind == "classification" and self.spec.scores in ("probabilities", "logits")
        ) or confidence_measure(self.spec) is not None

    def to_dict(self, output_name: str) -> dict[str, Any]:
        return replace(self.spec, output=output_name).to_dict()


def resolve_task(
    names: list[str],
    reference_outputs: list[np.ndarray],
    producers: list[str | None],
    stated: TaskSpec | None,
    budgets: dict[str, float] | None,
    inputs: Mapping[str, np.ndarray] | None = None,
) -> Task:
    """The stated task (checked against the outputs) or the one the outputs show (from them and the
    validation `inputs`: token ids), with its budgets. A stated token classifier without `mask` counts
    the tokens where an input named like *mask* is nonzero, as an inferred one does."""
    if stated is not None:
        if stated.output is not None and stated.output not in names:
            raise CompileError(f"--task-option output={stated.output}: the model's outputs are {', '.join(names)}")
        index = names.index(stated.output) if stated.output else 0
        spec, reason = replace(stated, output=names[index]), "stated with --task"
        spec = _token_mask(spec, reference_outputs[index], inputs or {})
        try:  # decode once: a wrong layout, blank index or shape fails here, not after building every variant
            task_metrics(spec, reference_outputs[index][:2], reference_outputs[index][:2])
        except (TaskError, ValueError, IndexError) as exc:
            raise CompileError(
                f"--task {spec.kind}: output {names[index]!r} of shape "
                f"{list(reference_outputs[index].shape)} cannot be read that way ({exc})"
            ) from exc
    else:
        found = infer_task(names, reference_outputs, producers, inputs)
        spec, reason = found.spec, "inferred: " + found.reason
        index = names.index(spec.output) if spec.output in names else 0
    try:
        return Task(spec, index, budgets_for(spec, budgets), reason)
    except TaskError as exc:
        raise CompileError(f"--budget: {exc}") from exc


def _token_mask(spec: TaskSpec, output: np.ndarray, inputs: Mapping[str, np.ndarray]) -> TaskSpec:
    """A token classifier's mask input: stated (it must be an [N, T] input), else found by name."""
    if spec.kind != "token_classification":
        return spec
    steps = output.shape[1] if output.ndim == 3 else -1
    if spec.mask is None:
        return replace(spec, mask=token_inputs(inputs, steps)[1])
    got = inputs.get(spec.mask)
    if got is None or got.ndim != 2 or got.shape[1] != steps:
        raise CompileError(
            f"--task-option mask={spec.mask}: not an [N, {steps}] input of the validation data "
            f"(inputs: {', '.join(f'{k} {list(v.shape)}' for k, v in inputs.items())})"
        )
    return spec


def token_mask(task: Task, inputs: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """The attention mask the token gate counts by, from the inputs the outputs came from."""
    if task.kind != "token_classification" or task.spec.mask is None or inputs is None:
        return None
    return inputs.get(task.spec.mask)


def check_labels_fit(task: Task, reference: np.ndarray, val: Dataset) -> None:
    """Validation `y`: one label per sample, or for a token classifier one per token ([N, T], the output's
    first two axes; negative: not counted). Refused naming the shape, not failed later in the metric."""
    y = val.labels
    if y is None:
        return
    where = f"validation data {val.source}: 'y'"
    if task.kind == "token_classification":
        if y.shape != reference.shape[:2] or y.dtype.kind not in "iu":
            raise CompileError(
                f"{where} has shape {list(y.shape)} dtype {y.dtype}; a token classifier takes integer "
                f"labels per token, {list(reference.shape[:2])} (negative: not counted)"
            )
    elif y.ndim != 1:
        raise CompileError(f"{where} has shape {list(y.shape)}; a {task.kind} task takes one label per sample")


def check_gate_can_judge(task: Task, reference: np.ndarray) -> None:
    """A detection gate over validation data in which FP32 finds nothing cannot tell a working variant
    from one that finds nothing: refuse with the figure instead of passing (or failing) blind.

    Seen on a real YOLOv8 detector (nudenet's 320n.onnx) fed images without its objects: every
    variant, FP32 itself included, was "rejected" with map50 0.0.
    """
    if task.kind != "detection":
        return
    found = detections(task.spec, reference)
    if sum(len(d) for d in found) == 0:
        raise CompileError(
            f"--val: FP32 keeps no box scoring >= {task.spec.score_threshold} in any of the {len(found)} "
            "validation samples, so the detection gate cannot judge a variant (one that finds nothing would "
            "match); give validation images that contain the model's objects, or lower "
            "--task-option score_threshold"
        )


def check_state(spec: TaskSpec, inputs: list[Any], outputs: list[Any]) -> None:
    """`state=IN:OUT` must pair an input with an output of the same dtype and shape (dynamic -1 dims
    match anything); one line naming the pair otherwise."""
    ins, outs = {s.name: s for s in inputs}, {s.name: s for s in outputs}
    for inp, out in spec.state or ():
        where = f"--task-option state={inp}:{out}"
        if inp not in ins:
            raise CompileError(f"{where}: {inp!r} is not an input of the model (inputs: {', '.join(ins)})")
        if out not in outs:
            raise CompileError(f"{where}: {out!r} is not an output of the model (outputs: {', '.join(outs)})")
        a, b = ins[inp], outs[out]
        if a.dtype != b.dtype:
            raise CompileError(f"{where}: the input is {a.dtype}, the output {b.dtype}; a state keeps its dtype")
        if len(a.shape) != len(b.shape) or any(x != y and x > 0 and y > 0 for x, y in zip(a.shape, b.shape)):
            raise CompileError(f"{where}: the input's shape {list(a.shape)} differs from the output's {list(b.shape)}")


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confidences(task: Task, output: np.ndarray) -> np.ndarray | None:
    """The task's confidence per sample (max class probability for a classifier); None when it has none."""
    return task_confidence(task.spec, output).confidence


def fixed_batch(session: RuntimeSession, axes: Axes | None = None) -> int | None:
    """The batch size the variant insists on along an input's batch axis, if any."""
    return chunked.fixed_batch(session, axes)


def run_dataset(session: RuntimeSession, data: dict[str, np.ndarray], axes: Axes | None = None) -> list[np.ndarray]:
    """Run all samples, in chunks the variant accepts (its fixed batch, e.g. 1, else VALIDATION_CHUNK);
    the device's self-test runs its golden set the same way (hardware_profiles/runtimes/chunked.py)."""
    return chunked.run_chunked(session, data, axes, VALIDATION_CHUNK)


def compare_outputs(
    task: Task,
    reference: list[np.ndarray],
    outputs: list[np.ndarray],
    labels: np.ndarray | None,
    dense_threshold: float = 0.5,
    inputs: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The task's figures and gate verdict for `outputs` against `reference`, beside the old
    element-wise figures (max error; "agreement": top-1 for a classifier, else thresholded
    element agreement), which are informational and decide nothing. `inputs`: what both ran on,
    for a token classifier's attention mask (without them every token counts)."""
    ref_raw = reference[task.output_index]
    out_raw = np.asarray(outputs[task.output_index]).reshape(ref_raw.shape)
    ref = ref_raw.astype(np.float64)
    out = out_raw.astype(np.float64)
    diff = np.abs(ref - out)
    metrics: dict[str, Any] = {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
    }
    with_labels = task.kind in ("classification", "token_classification")
    figures = task_metrics(task.spec, ref_raw, out_raw, labels if with_labels else None, token_mask(task, inputs))
    if task.kind == "classification":
        metrics["agreement"] = figures["top1_agreement"]
        if "accuracy" in figures:
            metrics["accuracy"] = figures["accuracy"]
        conf = confidences(task, out)
        if conf is not None:
            metrics["mean_confidence"] = float(conf.mean())
    elif task.kind == "token_classification":
        metrics["agreement"] = figures["token_agreement"]
        if "accuracy" in figures:
            metrics["accuracy"] = figures["accuracy"]
    else:
        metrics["agreement"] = float(((ref > dense_threshold) == (out > dense_threshold)).mean())
    metrics.update({k: v for k, v in figures.items() if k not in ("accuracy",)})
    if task.spec.metric:
        metrics.update(user_metric(task.spec.metric, reference, outputs))
    verdict = gate(task.spec, metrics, task.budgets)
    metrics.update(
        task_gate="pass" if verdict.passed else "fail",
        task_metric=verdict.metric,
        task_value=verdict.value,
        task_budget=verdict.budget,
        task_margin=verdict.margin,
        task_reason=verdict.reason,
    )
    return metrics


def user_metric(path: str, reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
    """Call the user's `module:function(reference_outputs, variant_outputs) -> {name: float}` hook."""
    module_name, _, func_name = path.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        figures = func(reference, outputs)
        return {str(k): float(v) for k, v in dict(figures).items()}
    except Exception as exc:  # the user's code: any failure is reported with its path
        raise CompileError(f"task metric hook {path}: {type(exc).__name__}: {exc}") from exc


def frozen_input_shapes(session: RuntimeSession, val: Dataset) -> dict[str, list[int]]:
    """Inputs whose shape the variant fixed where the validation data (the model's) varies: a
    LiteRT variant lowered at the calibration width takes only that width, so the manifest must
    advertise that shape, not the model's -1."""
    frozen = {}
    for spec in session.inputs:
        data = val.inputs.get(spec.name)
        shape = [int(d) for d in spec.shape]
        if data is None or len(shape) != data.ndim:
            continue
        if any(d > 0 for d in shape[1:]):
            frozen[spec.name] = [-1, *shape[1:]] if shape and shape[0] in (-1, 1) else shape
    return frozen


def _gate_buckets(
    metrics: dict[str, Any], session: Any, task: Task, val: Dataset, reference_model: Path, dense_threshold: float
) -> None:
    """Each bucket's task figure on `val` fitted (cropped or padded) to its shape, against FP32 on the
    same inputs; the variant fails the gate when any bucket does, naming it."""
    fill = pad_value(task.spec) or 0.0
    ref_session = load_session("onnxruntime", reference_model, graph_optimization=False)
    figures = []
    try:
        for bucket, sub in zip(session.buckets, session.sessions):
            data = {n: fit_to(a, bucket.inputs[n], fill) if n in bucket.inputs else a for n, a in val.inputs.items()}
            try:
                got = run_dataset(sub, data, val.axes)
            except Exception as exc:  # a runtime's own error types vary; the message is what matters
                raise VariantSkipped(f"bucket {bucket.label()} fails: {type(exc).__name__}: {exc}") from exc
            ref = run_dataset(ref_session, data, val.axes)
            m = compare_outputs(task, ref, got, None, dense_threshold, data)
            figures.append(
                {"bucket": bucket.label(), "gate": m["task_gate"], "metric": m["task_metric"], "value": m["task_value"]}
            )
            if m["task_gate"] == "fail" and metrics.get("task_gate") == "pass":
                metrics.update(
                    task_gate="fail",
                    task_reason=f"bucket {bucket.label()}: {m['task_reason']}",
                    task_value=m["task_value"],
                    task_margin=m["task_margin"],
                )
    finally:
        ref_session.close()
    metrics["buckets"] = figures


def _timing(session: RuntimeSession, val: Dataset, seconds: float) -> dict[str, Any]:
    """Latency at batch 1 and throughput at batch 8, by the model's batch rules: a fixed batch is
    timed at that batch only; a runtime error while timing is reported, never fatal."""
    fixed = fixed_batch(session, val.axes)
    figures: dict[str, Any] = {}
    try:
        lat = measure_latency(session, batch_of(val.inputs, fixed or 1, val.axes), max_seconds=seconds)
        figures.update(latency_p50_ms=lat.p50_ms, latency_p95_ms=lat.p95_ms)
        if fixed is None:
            figures["throughput_b8"] = measure_throughput(
                session, batch_of(val.inputs, 8, val.axes), max_seconds=seconds, batch=8
            )
    except Exception as exc:  # a runtime's own error types vary; the figure is optional, the variant is fine
        figures["timing_error"] = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        )
    return figures


def execution_providers(session: Any) -> list[str] | None:
    """The ONNX Runtime execution providers a session (or a bucketed one's first) really got; None
    for other runtimes. Read from the session, not the request: the adapter and ORT itself drop a
    provider that is missing or fails to start and run on the CPU instead."""
    inner = getattr(session, "sessions", None)
    got = getattr(inner[0] if inner else session, "providers", None)
    return [str(p) for p in got] if got is not None else None


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


def check_declared_io(session: RuntimeSession, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """VariantSkipped when the built variant's tensors differ from the model's in dtype or rank (matched by name,
    else by position), as the agent checks at load: a lowering that turns a [5] output into [1, 5] would
    otherwise be validated, chosen, and then refused on the device."""
    for what, want, got in (("input", inputs, list(session.inputs)), ("output", outputs, list(session.outputs))):
        by_name = {g.name: g for g in got}
        for i, spec in enumerate(want):
            have = by_name.get(spec.name) or (got[i] if len(got) == len(want) else None)
            if have is None:
                raise VariantSkipped(f"the built variant has no {what} {spec.name!r} (it has {', '.join(by_name)})")
            if have.dtype != spec.dtype or len(have.shape) != len(spec.shape):
                raise VariantSkipped(
                    f"{what} {spec.name!r} is {have.dtype} {_dims(have.shape)} in the built variant but "
                    f"{spec.dtype} {_dims(spec.shape)} in the model; the agent would refuse to load it"
                )


def _dims(shape: Any) -> str:
    return "[" + ", ".join("?" if d is None or d < 0 else str(d) for d in shape) + "]"


def validate_variant(
    runtime: str,
    files: list[Path],
    session_options: dict[str, Any],
    task: Task,
    reference: list[np.ndarray],
    val: Dataset,
    *,
    timing: bool = True,
    timing_seconds: float = 2.0,
    dense_threshold: float = 0.5,
    buckets: list[dict[str, Any]] | None = None,
    pad_axes: dict[str, list[int]] | None = None,
    reference_model: Path | None = None,
    declared: tuple[list[TensorSpec], list[TensorSpec]] | None = None,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Load the variant, compare it on `val`, time it; returns (metrics, outputs on val).

    `declared`: the model's inputs and outputs as the manifest will list them; a variant whose tensors differ
    in dtype or rank is skipped here, since the agent refuses to load it (edge_agent/model.py).

    A variant built in static shape `buckets` (one file each) runs `val` as the agent serves it
    (the fitting bucket, padded where the task allows), and every bucket is also gated on `val`
    fitted to its own shape against `reference_model` (FP32) run on the same fitted inputs.
    Raises VariantSkipped when the runtime cannot load or run it, so one broken
    variant never stops the others.
    """
    started = time.perf_counter()
    try:
        if buckets:
            shaped = [Bucket.from_dict(b) for b in buckets]
            session: Any = BucketedSession(
                [load_session(runtime, b.file, **session_options) for b in shaped], shaped, task.spec, pad_axes
            )
        else:
            session = load_session(runtime, files[0], **session_options)
    except RuntimeUnavailableError as exc:
        raise VariantSkipped(f"does not load: {exc}") from exc
    load_ms = (time.perf_counter() - started) * 1000.0
    if declared is not None:
        try:
            check_declared_io(session, *declared)
        except VariantSkipped:
            session.close()
            raise
    try:
        outputs = run_dataset(session, val.inputs, val.axes)
    except Exception as exc:  # a runtime's own error types vary; the message is what matters
        raise VariantSkipped(f"fails on validation data: {type(exc).__name__}: {exc}") from exc
    metrics = compare_outputs(task, reference, outputs, val.labels, dense_threshold, val.inputs)
    ran_on = execution_providers(session)
    if ran_on is not None:  # where it really ran: ORT falls back to CPU for a provider it lacks
        metrics["validated_on"] = ran_on
    if buckets and reference_model is not None:
        _gate_buckets(metrics, session, task, val, reference_model, dense_threshold)
    metrics.update(file_bytes=file_bytes(files), weight_bytes=weight_bytes(runtime, files), load_ms=round(load_ms, 2))
    frozen = frozen_input_shapes(session, val)
    if frozen:
        metrics["input_shapes"] = frozen
    if timing:
        metrics.update(_timing(session, val, timing_seconds))
    session.close()
    return metrics, outputs
