"""Runs the sensitivity search (ort_sensitivity.py) on a real QDQ model with ONNX Runtime.

Each candidate graph (chain tensors left float, ort_qdq_graph.unquantize) runs the calibration
set in one thread, and the compiler's own task gate (validate.compare_outputs against the FP32
model on the same inputs) gives its margin. The calibration set, not the validation set, chooses:
the validation set stays held out for the gate the compile applies to the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.variants.calibration import iter_batches
from tandem.model_compiler.variants.ort_qdq_graph import (
    chain_groups,
    float_source,
    freed_tensors,
    name_nodes,
    unquantize,
)
from tandem.model_compiler.variants.ort_sensitivity import Candidate, SearchFailed, SearchResult, search

if TYPE_CHECKING:
    import onnx

    from tandem.model_compiler.validate import Task


def chain_candidates(model: onnx.ModelProto) -> list[Candidate]:
    """One candidate per chain group that has tensors of its own to un-quantize (a lone op between
    two convolutions has none: its neighbours keep its Q/DQ, so ORT fuses it either way)."""
    out = []
    for group in chain_groups(model):
        tensors = freed_tensors(model, group.nodes)
        if tensors:
            out.append(Candidate(group.describe(), tuple(tensors)))
    return out


def _runner(calib: Mapping[str, np.ndarray], shapes: Mapping[str, list[int]]) -> Callable[[bytes], list[np.ndarray]]:
    import onnxruntime as ort

    batches = list(iter_batches(calib, shapes, max_batch=8))

    def run(model: bytes) -> list[np.ndarray]:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        parts = [session.run(None, feeds) for feeds in batches]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    return run


def search_float_tensors(
    qdq_path: Path,
    float_path: Path,
    reference_path: Path,
    calib: Mapping[str, np.ndarray],
    shapes: Mapping[str, list[int]],
    task: Task | None,
    dense_threshold: float,
    options: Mapping[str, Any],
    log: Callable[[str], None],
) -> tuple[SearchResult, list[str]]:
    """Search, then rewrite `qdq_path` in place with the chosen tensors float. Returns the result
    and the notes the variant records. `float_path` is the graph the quantizer read (its folded
    Relu/Clip come back with the tensors they clipped); `reference_path` the FP32 the gate compares to."""
    import onnx

    from tandem.model_compiler.validate import compare_outputs

    if task is None or not task.budgets:
        raise VariantSkipped("the float-tensor search needs the task's gate (a task with a budget)")
    qdq = onnx.load(str(qdq_path))
    name_nodes(qdq)
    source = float_source(qdq, onnx.load(str(float_path)))
    candidates = chain_candidates(qdq)
    run = _runner(calib, shapes)
    reference = run(onnx.load(str(reference_path)).SerializeToString())

    def evaluate(floated: frozenset[str]) -> float:
        outputs = run(unquantize(qdq, floated, source).SerializeToString())
        figures = compare_outputs(task, reference, outputs, None, dense_threshold)
        return float(figures["task_margin"]) if figures["task_margin"] is not None else float("-inf")

    try:
        result = search(
            candidates,
            evaluate,
            share=float(options.get("share", 0.25)),
            seconds=float(options.get("seconds", 240.0)),
            log=log,
        )
    except SearchFailed as exc:
        raise VariantSkipped(f"float-tensor search: {exc}") from exc
    onnx.save(unquantize(qdq, result.float_tensors, source), str(qdq_path))
    total = sum(len(c.tensors) for c in candidates)
    notes = [
        f"chain tensors left float by a sensitivity search on the calibration set ({task.kind} gate, "
        f"{result.evaluations} evaluations, {result.seconds:.0f} s): {len(result.float_tensors)} of {total}; "
        + result.summary()
    ]
    notes += [f"left float: {t} ({result.why.get(t, '')})" for t in result.float_tensors[:20]]
    if len(result.float_tensors) > 20:
        notes.append(f"... and {len(result.float_tensors) - 20} more")
    return result, notes
