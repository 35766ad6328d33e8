"""Full-integer INT8 from the float IR: the TFLite quantization scheme.

Weights int8 symmetric per output channel (zero point 0); biases int32 at
input_scale * weight_scale; activations int8 asymmetric per tensor from calibration
ranges; ops whose int8 kernels copy values (reshape, transpose, max/avg pool, pad,
split, min/max) reuse their input's parameters; softmax/logistic outputs take the
fixed scales the kernels require. Float I/O gets QUANTIZE/DEQUANTIZE ops at the edges.
"""

from __future__ import annotations

import copy

import numpy as np

from tandem.model_compiler.litert.errors import LoweringError
from tandem.model_compiler.litert.graph import share_constants
from tandem.model_compiler.litert.ir import Graph, Op, Quant, Tensor
from tandem.model_compiler.litert.scale_fold import SATURATE, fold_relu6_scale

SAME_AS_INPUT = {
    "RESHAPE",
    "TRANSPOSE",
    "MAX_POOL_2D",
    "AVERAGE_POOL_2D",
    "PAD",
    "PADV2",
    "SPLIT",
    "MAXIMUM",
    "MINIMUM",
    "REDUCE_MAX",
    "RESIZE_NEAREST_NEIGHBOR",
    "RESIZE_BILINEAR",
    "STRIDED_SLICE",
    "DEPTH_TO_SPACE",
}
FIXED_OUTPUT = {"SOFTMAX": (1.0 / 256, -128), "LOGISTIC": (1.0 / 256, -128), "TANH": (1.0 / 128, 0)}
WEIGHT_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 0}
# Where each op keeps its data, weight and bias inputs when not at 0, 1, 2.
DATA_INPUT = {"SPLIT": 1, "TRANSPOSE_CONV": 2}
WEIGHT_BIAS_INPUTS = {"TRANSPOSE_CONV": (1, 3)}
_EPS = 1e-8
_MIN_RANGE = 1e-6
# Kernels (XNNPACK's in particular) reject a requantization multiplier
# input_scale * weight_scale / output_scale of 256 or more; keep a margin.
_MAX_MULTIPLIER = 128.0


def affine(lo: float, hi: float) -> Quant:
    """Asymmetric int8 parameters covering [lo, hi] and exact zero."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise LoweringError(f"calibration range [{lo}, {hi}] is not finite")
    if hi - lo < _MIN_RANGE:  # a dead tensor (e.g. a ReLU that never fired): any scale holds its zeros
        hi = lo + 1.0
    scale = (hi - lo) / 255.0
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quant.per_tensor(scale, zero_point)


def quantize_array(data: np.ndarray, quant: Quant) -> np.ndarray:
    return np.clip(np.round(data / quant.scale[0]) + quant.zero_point[0], -128, 127).astype(np.int8)


def _const_data(tensor: Tensor) -> np.ndarray:
    """A constant tensor's contents (weights, biases and constant inputs always have them)."""
    assert tensor.data is not None, f"{tensor.name!r} is not a constant"
    return tensor.data


def _quant(tensor: Tensor) -> Quant:
    """Parameters of a tensor that has been quantized already."""
    assert tensor.quant is not None, f"{tensor.name!r} has no quantization parameters"
    return tensor.quant


def _weights(tensor: Tensor, axis: int) -> Quant:
    data = _const_data(tensor).astype(np.float32)
    reduce_axes = tuple(a for a in range(data.ndim) if a != axis)
    scale = (np.maximum(np.abs(data).max(axis=reduce_axes), _EPS) / 127.0).astype(np.float32)
    if scale.max() <= np.nextafter(scale.min(), np.float32(np.inf)):
        # equal channels (within 1 ulp): one scale and zero point, here and on the bias, instead
        # of 8 bytes of parameters per channel on each (the int8 values are the same)
        scale = np.full(1, scale.max(), np.float32)
    shape = [1] * data.ndim
    shape[axis] = -1
    tensor.data = np.clip(np.round(data / scale.reshape(shape)), -127, 127).astype(np.int8)
    tensor.dtype = "int8"
    tensor.quant = Quant(scale.astype(np.float32), np.zeros(len(scale), np.int64), axis)
    return tensor.quant


def _bias(tensor: Tensor, input_quant: Quant, weight_quant: Quant) -> None:
    scale: np.ndarray = (input_quant.scale[0] * weight_quant.scale).astype(np.float64)
    data = _const_data(tensor).astype(np.float64)
    tensor.data = np.clip(np.round(data / scale), -(2**31), 2**31 - 1).astype(np.int32)
    tensor.dtype = "int32"
    tensor.quant = Quant(scale.astype(np.float32), np.zeros(len(scale), np.int64), 0)


def _const(tensor: Tensor, quant: Quant | None = None) -> None:
    if tensor.quant is not None or tensor.dtype != "float32":
        return
    data = _const_data(tensor).astype(np.float32)
    quant = quant or affine(float(data.min()), float(data.max()))
    tensor.data = quantize_array(data, quant)
    tensor.dtype = "int8"
    tensor.quant = quant


# XNNPACK delegates an int8 ADD/SUB only when each input's scale is at least 2^-10 of the output's.
_MIN_ADDEND_RATIO = 1.0 / 256


def _addend(data: np.ndarray, out: Quant) -> Quant:
    """Parameters for a constant ADD/SUB operand: its own range, unless that grid is finer than
    the output's step / 256. A tiny constant (PP-OCRv4 det's hardswish offset 0.0075 beside a
    tensor reaching 28) on its own grid kept that ADD, and the graph around it, out of XNNPACK; on a grid of
    output step / 256 the constant is still resolved far below what the output can show."""
    natural = affine(float(data.min()), float(data.max()))
    floor = float(out.scale[0]) * _MIN_ADDEND_RATIO
    if natural.scale[0] >= floor:
        return natural
    lo = min(float(data.min()), 0.0)
    return affine(lo, lo + 255.0 * floor)


def _activation(graph: Graph, index: int, ranges: dict[int, tuple[float, float]]) -> Quant:
    if index not in ranges:
        raise LoweringError(f"no calibration range for tensor {graph.tensors[index].name!r}")
    return affine(*ranges[index])


FLOAT_ONLY = {"DIV", "SQRT"}  # no int8 TFLite kernels


def _quantize_op(graph: Graph, op: Op, ranges: dict[int, tuple[float, float]]) -> None:
    if op.kind in FLOAT_ONLY:
        raise LoweringError(f"TFLite has no int8 {op.kind} kernel (from {op.source}); this model gets FP32 LiteRT only")
    tensors = graph.tensors
    first = tensors[op.inputs[DATA_INPUT.get(op.kind, 0)]]
    for out in op.outputs:
        t = tensors[out]
        if op.kind in FIXED_OUTPUT:
            t.quant = Quant.per_tensor(*FIXED_OUTPUT[op.kind])
        elif op.kind in SAME_AS_INPUT:
            t.quant = copy.deepcopy(first.quant)
        else:
            t.quant = _activation(graph, out, ranges)
        t.dtype = "int8"
    if op.kind in WEIGHT_AXIS:
        w_at, b_at = WEIGHT_BIAS_INPUTS.get(op.kind, (1, 2))
        weight = tensors[op.inputs[w_at]]
        weight_q = _weights(weight, WEIGHT_AXIS[op.kind])
        out_q = _quant(tensors[op.outputs[0]])
        floor = float(_quant(first).scale[0] * weight_q.scale.max()) / _MAX_MULTIPLIER
        if out_q.scale[0] < floor and SATURATE not in op.options:  # a saturating output keeps its range
            lo = float((-128 - out_q.zero_point[0]) * out_q.scale[0])
            hi = float((127 - out_q.zero_point[0]) * out_q.scale[0])
            mid = (lo + hi) / 2
            tensors[op.outputs[0]].quant = affine(mid - floor * 127.5, mid + floor * 127.5)
        if len(op.inputs) > b_at and op.inputs[b_at] >= 0:
            _bias(tensors[op.inputs[b_at]], _quant(first), weight_q)
        return
    for i in op.inputs:
        t = tensors[i]
        if t.data is not None and t.dtype == "float32":
            if op.kind in SAME_AS_INPUT:
                _const(t, first.quant)
            elif op.kind in ("ADD", "SUB"):
                _const(t, _addend(_const_data(t), _quant(tensors[op.outputs[0]])))
            else:
                _const(t, None)


# An output concat whose inputs' ranges differ more than this keeps float (see _float_output_concats).
_CONCAT_SPREAD = 16.0


def _float_output_concats(graph: Graph, ranges: dict[int, tuple[float, float]]) -> tuple[list[Op], list[Op]]:
    """Graph-output CONCATENATIONs of values on very different scales, to be run in float, and the
    RESHAPE/TRANSPOSE ops between them and the output (float too).

    A YOLOv8 head concatenates boxes in pixels (0-320) with class scores (0-1); one int8 scale
    for both (XNNPACK's concat needs equal parameters) leaves the scores two values, 0 and one
    step of 1.24 (nudenet's 320n: map50 0.32-0.50 against FP32). Dequantizing the inputs and
    concatenating in float costs one small op at the very end.
    """
    concats: list[Op] = []
    chain: list[Op] = []
    for index in graph.outputs:
        op = graph.producer(index)
        passed: list[Op] = []
        while op is not None and op.kind in ("RESHAPE", "TRANSPOSE") and len(graph.consumers(op.inputs[0])) == 1:
            passed.append(op)
            op = graph.producer(op.inputs[0])
        if op is None or op.kind != "CONCATENATION":
            continue
        if len(graph.consumers(op.outputs[0])) > (1 if passed else 0):
            continue
        widths = [ranges[i][1] - ranges[i][0] for i in op.inputs if i in ranges]
        if len(widths) > 1 and max(widths) > _CONCAT_SPREAD * max(min(widths), _MIN_RANGE):
            concats.append(op)
            chain += passed
    return concats, chain


def _dequantize_inputs(graph: Graph, op: Op) -> list[Op]:
    """DEQUANTIZE ops feeding `op` float copies of its int8 inputs (constants are left float)."""
    extra = []
    for k, i in enumerate(op.inputs):
        t = graph.tensors[i]
        if t.dtype == "int8" and t.data is None:
            f = graph.add_tensor(Tensor(f"{t.name}/float", t.shape, "float32"))
            extra.append(Op("DEQUANTIZE", [i], [f], {}, op.source))
            op.inputs[k] = f
    return extra


def _unify_concat_ranges(
    graph: Graph, ranges: dict[int, tuple[float, float]], skip: list[Op] | None = None
) -> dict[int, tuple[float, float]]:
    """One range for a CONCATENATION's inputs and output: XNNPACK's int8 concat needs equal parameters."""
    ranges = dict(ranges)
    for op in graph.ops:
        if op.kind != "CONCATENATION" or any(op is s for s in skip or ()):
            continue
        members = [i for i in [*op.inputs, *op.outputs] if i in ranges]
        lo = min(ranges[i][0] for i in members)
        hi = max(ranges[i][1] for i in members)
        for i in members:
            ranges[i] = (lo, hi)
    return ranges


def _requantize_concat_inputs(graph: Graph, op: Op) -> list[Op]:
    """QUANTIZE (int8 -> int8) ops for concat inputs whose parameters still differ from the output's
    (e.g. a softmax output, whose scale is fixed)."""
    out = graph.tensors[op.outputs[0]]
    extra = []
    for k, i in enumerate(op.inputs):
        t = graph.tensors[i]
        if t.quant is not None and (
            t.quant.scale[0] != _quant(out).scale[0] or t.quant.zero_point[0] != _quant(out).zero_point[0]
        ):
            r = graph.add_tensor(Tensor(f"{t.name}/requant", t.shape, "int8", None, copy.deepcopy(out.quant)))
            extra.append(Op("QUANTIZE", [i], [r], {}, op.source))
            op.inputs[k] = r
    return extra


def _narrow_clamp_input(graph: Graph, op: Op, ranges: dict[int, tuple[float, float]]) -> list[Op]:
    """MAXIMUM/MINIMUM kernels compare raw int8 values, so input, bound and output share one
    scale. When the input's range is much wider than the clamped output's (Clip(-0.5, 0.7) after
    a conv reaching +-60), requantize the input to the output's parameters first so the bound
    keeps its precision; the QUANTIZE saturates what lies outside."""
    src = graph.tensors[op.inputs[0]]
    out = op.options.get("clamp_output", op.outputs[0])
    if src.quant is None or out not in ranges:
        return []
    narrow = affine(*ranges[out])
    if src.quant.scale[0] <= 2 * narrow.scale[0]:
        return []
    original = op.inputs[0]
    r = graph.add_tensor(Tensor(f"{src.name}/narrowed", src.shape, "int8", None, narrow))
    op.inputs[0] = r
    return [Op("QUANTIZE", [original], [r], {}, op.source)]


def quantize(graph: Graph, ranges: dict[int, tuple[float, float]], int8_io: bool = False) -> Graph:
    """A full-integer copy of `graph`. With int8_io the model's inputs/outputs are int8 too."""
    q = copy.deepcopy(graph)
    ranges = fold_relu6_scale(q, ranges)
    float_concats, float_chain = ([], []) if int8_io else _float_output_concats(q, ranges)
    ranges = _unify_concat_ranges(q, ranges, float_concats)
    for index in q.inputs:
        q.tensors[index].quant = _activation(q, index, ranges)
        q.tensors[index].dtype = "int8"
    body: list[Op] = []
    for op in q.ops:
        if any(op is f for f in float_concats):
            body += _dequantize_inputs(q, op)
            body.append(op)  # inputs and output stay float32
            continue
        if any(op is f for f in float_chain):
            body.append(op)  # a reshape/transpose of the float concat on its way out
            continue
        if op.kind in ("MAXIMUM", "MINIMUM"):
            body += _narrow_clamp_input(q, op, ranges)
        _quantize_op(q, op, ranges)
        if op.kind == "CONCATENATION":
            body += _requantize_concat_inputs(q, op)
        body.append(op)
    if int8_io:
        return share_constants(q)
    head: list[Op] = []
    for k, index in enumerate(q.inputs):
        inner = q.tensors[index]
        outer = q.add_tensor(Tensor(inner.name, inner.shape, "float32"))
        inner.name = f"{inner.name}/int8"
        head.append(Op("QUANTIZE", [outer], [index], {}, "input"))
        q.inputs[k] = outer
    tail: list[Op] = []
    for k, index in enumerate(q.outputs):
        inner = q.tensors[index]
        if inner.dtype == "float32":  # produced in float (an output concat kept float)
            continue
        outer = q.add_tensor(Tensor(inner.name, inner.shape, "float32"))
        inner.name = f"{inner.name}/int8"
        tail.append(Op("DEQUANTIZE", [index], [outer], {}, "output"))
        q.outputs[k] = outer
    q.ops = head + body + tail
    return share_constants(q)
