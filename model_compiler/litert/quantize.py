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

from model_compiler.litert.errors import LoweringError
from model_compiler.litert.ir import Graph, Op, Quant, Tensor

SAME_AS_INPUT = {"RESHAPE", "TRANSPOSE", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD", "PADV2", "SPLIT",
                 "MAXIMUM", "MINIMUM", "REDUCE_MAX"}
FIXED_OUTPUT = {"SOFTMAX": (1.0 / 256, -128), "LOGISTIC": (1.0 / 256, -128), "TANH": (1.0 / 128, 0)}
WEIGHT_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}
_EPS = 1e-8


def affine(lo: float, hi: float) -> Quant:
    """Asymmetric int8 parameters covering [lo, hi] and exact zero."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise LoweringError(f"calibration range [{lo}, {hi}] is not finite")
    scale = max((hi - lo) / 255.0, _EPS)
    zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    return Quant.per_tensor(scale, zero_point)


def quantize_array(data: np.ndarray, quant: Quant) -> np.ndarray:
    return np.clip(np.round(data / quant.scale[0]) + quant.zero_point[0], -128, 127).astype(np.int8)


def _weights(tensor: Tensor, axis: int) -> None:
    data = tensor.data.astype(np.float32)
    reduce_axes = tuple(a for a in range(data.ndim) if a != axis)
    scale = np.maximum(np.abs(data).max(axis=reduce_axes), _EPS) / 127.0
    shape = [1] * data.ndim
    shape[axis] = -1
    tensor.data = np.clip(np.round(data / scale.reshape(shape)), -127, 127).astype(np.int8)
    tensor.dtype = "int8"
    tensor.quant = Quant(scale.astype(np.float32), np.zeros(len(scale), np.int64), axis)


def _bias(tensor: Tensor, input_quant: Quant, weight_quant: Quant) -> None:
    scale = (input_quant.scale[0] * weight_quant.scale).astype(np.float64)
    tensor.data = np.clip(np.round(tensor.data.astype(np.float64) / scale), -2**31, 2**31 - 1).astype(np.int32)
    tensor.dtype = "int32"
    tensor.quant = Quant(scale.astype(np.float32), np.zeros(len(scale), np.int64), 0)


def _const(tensor: Tensor, quant: Quant | None = None) -> None:
    if tensor.quant is not None or tensor.dtype != "float32":
        return
    data = tensor.data.astype(np.float32)
    quant = quant or affine(float(data.min()), float(data.max()))
    tensor.data = quantize_array(data, quant)
    tensor.dtype = "int8"
    tensor.quant = quant


def _activation(graph: Graph, index: int, ranges: dict[int, tuple[float, float]]) -> Quant:
    if index not in ranges:
        raise LoweringError(f"no calibration range for tensor {graph.tensors[index].name!r}")
    return affine(*ranges[index])


def _quantize_op(graph: Graph, op: Op, ranges: dict[int, tuple[float, float]]) -> None:
    tensors = graph.tensors
    first = tensors[op.inputs[0]]
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
        weight = tensors[op.inputs[1]]
        _weights(weight, WEIGHT_AXIS[op.kind])
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            _bias(tensors[op.inputs[2]], first.quant, weight.quant)
        return
    for i in op.inputs:
        t = tensors[i]
        if t.data is not None and t.dtype == "float32":
            _const(t, first.quant if op.kind in SAME_AS_INPUT else None)


def quantize(graph: Graph, ranges: dict[int, tuple[float, float]], int8_io: bool = False) -> Graph:
    """A full-integer copy of `graph`. With int8_io the model's inputs/outputs are int8 too."""
    q = copy.deepcopy(graph)
    for index in q.inputs:
        q.tensors[index].quant = _activation(q, index, ranges)
        q.tensors[index].dtype = "int8"
    body = list(q.ops)
    for op in body:
        _quantize_op(q, op, ranges)
    if int8_io:
        return q
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
        outer = q.add_tensor(Tensor(inner.name, inner.shape, "float32"))
        inner.name = f"{inner.name}/int8"
        tail.append(Op("DEQUANTIZE", [index], [outer], {}, "output"))
        q.outputs[k] = outer
    q.ops = head + body + tail
    return q
