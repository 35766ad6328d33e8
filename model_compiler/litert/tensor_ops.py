"""Lowering rules for the tensor ops of attention and normalization blocks (PP-OCRv4 rec's
SVTR neck, LayerNorm written out): ReduceMean, Pow, Sqrt, dynamic Slice and MatMul.

They run in plain (ONNX) layout; DIV and SQRT have no int8 TFLite kernel, so a model
that needs them gets FP32 LiteRT variants only (quantize.py says so).
"""

from __future__ import annotations

import numpy as np

from tandem.model_compiler.litert.errors import unsupported
from tandem.model_compiler.litert.fold import fold
from tandem.model_compiler.litert.graph import Lowering
from tandem.model_compiler.litert.prepass import Node

NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


def _axes(low: Lowering, node: Node, rank: int) -> list[int]:
    if "axes" in node.attrs:
        axes = node.attrs["axes"]
    elif len(node.inputs) > 1 and node.inputs[1]:
        value = low.const(node.inputs[1])
        if value is None:
            raise unsupported(node.op_type, node.name, "axes must be constant")
        axes = value.tolist()
    else:
        axes = list(range(rank))
    return sorted(int(a) % rank for a in axes)


def reduce_mean(low: Lowering, node: Node) -> None:
    x_name = node.inputs[0]
    shape = low.shape(x_name)
    axes = _axes(low, node, len(shape))
    keep = bool(node.attrs.get("keepdims", 1))
    layout = "nhwc" if keep and len(shape) == 4 and low.native_layout(x_name) == "nhwc" else "plain"
    physical = sorted(NHWC_AXIS[a] for a in axes) if layout == "nhwc" else axes
    out_shape = (
        [1 if k in axes else d for k, d in enumerate(shape)]
        if keep
        else [d for k, d in enumerate(shape) if k not in axes]
    )
    x = low.tensor(x_name, layout)
    out = low.define(node.outputs[0], out_shape, layout)
    low.emit(
        "MEAN", [x, low.graph.const(f"{node.name}/axes", np.array(physical, dtype=np.int32))], [out], keep_dims=keep
    )


def pow_op(low: Lowering, node: Node) -> None:
    exponent = low.const(node.inputs[1])
    if exponent is None or exponent.size != 1 or float(exponent.reshape(-1)[0]) not in (0.5, 1.0, 2.0):
        raise unsupported("Pow", node.name, "only constant exponents 0.5, 1 and 2")
    e = float(exponent.reshape(-1)[0])
    x_name = node.inputs[0]
    if e == 1.0:
        low.alias(node.outputs[0], x_name)
        return
    layout = low.native_layout(x_name)
    x = low.tensor(x_name, layout)
    out = low.define(node.outputs[0], low.shape(x_name), layout)
    if e == 2.0:
        low.emit("MUL", [x, x], [out], activation="NONE")
    else:
        low.emit("SQRT", [x], [out])


def slice_op(low: Lowering, node: Node) -> None:
    """A Slice of a computed tensor: STRIDED_SLICE over all axes (positive steps)."""
    x_name = node.inputs[0]
    shape = low.shape(x_name)
    params = [low.const(n) if n else None for n in node.inputs[1:]]
    if any(p is None for n, p in zip(node.inputs[1:], params) if n):
        raise unsupported("Slice", node.name, "starts, ends, axes and steps must be constant")
    starts, ends = params[0], params[1]
    assert starts is not None and ends is not None, "Slice has starts and ends"
    axes = params[2].tolist() if len(params) > 2 and params[2] is not None else list(range(len(starts)))
    steps = params[3].tolist() if len(params) > 3 and params[3] is not None else [1] * len(starts)
    if any(s <= 0 for s in steps):
        raise unsupported("Slice", node.name, "negative steps")
    begin, end, stride = [0] * len(shape), list(shape), [1] * len(shape)
    for a, s, e, st in zip(axes, starts.tolist(), ends.tolist(), steps):
        a = int(a) % len(shape)
        begin[a], end[a], stride[a] = slice(int(s), int(e), int(st)).indices(shape[a])
    sliced = fold("Slice", [np.zeros(shape, np.float32), *params], {})
    assert sliced is not None, "Slice has a folder"
    out_shape = sliced.shape
    x = low.tensor(x_name, "plain")
    out = low.define(node.outputs[0], out_shape)
    consts = [
        low.graph.const(f"{node.name}/{k}", np.array(v, dtype=np.int32))
        for k, v in (("begin", begin), ("end", end), ("strides", stride))
    ]
    low.emit("STRIDED_SLICE", [x, *consts], [out])


def batch_matmul(low: Lowering, node: Node) -> None:
    """MatMul of two computed tensors (attention scores, attention x values)."""
    a_name, b_name = node.inputs[0], node.inputs[1]
    sa, sb = low.shape(a_name), low.shape(b_name)
    if len(sa) < 2 or len(sb) < 2:
        raise unsupported("MatMul", node.name, "operands must be at least 2-D")
    out_shape = np.matmul(np.zeros(sa, np.float32), np.zeros(sb, np.float32)).shape
    a, b = low.tensor(a_name, "plain"), low.tensor(b_name, "plain")
    out = low.define(node.outputs[0], out_shape)
    low.emit("BATCH_MATMUL", [a, b], [out], adj_x=False, adj_y=False)


def _split_sizes(low: Lowering, node: Node, dim: int) -> list[int]:
    """ONNX Split's piece sizes: the `split` input (opset 13+) or attribute, else equal pieces."""
    count = len(node.outputs)
    if len(node.inputs) > 1 and node.inputs[1]:
        value = low.const(node.inputs[1])
        if value is None:
            raise unsupported("Split", node.name, "the split sizes must be constant")
        sizes = [int(s) for s in value.reshape(-1)]
    elif "split" in node.attrs:
        sizes = [int(s) for s in node.attrs["split"]]
    else:
        # Equal pieces; opset 18's num_outputs lets the last one be smaller (ceil division).
        step = -(-dim // count)
        sizes = [min(step, dim - k * step) for k in range(count)]
    if len(sizes) != count or sum(sizes) != dim or any(s <= 0 for s in sizes):
        raise unsupported("Split", node.name, f"sizes {sizes} do not cut an axis of {dim} into {count} pieces")
    return sizes


def split_op(low: Lowering, node: Node) -> None:
    """Split (YOLOv8's C2f blocks, gates of recurrent cells): SPLIT for equal pieces, else
    one STRIDED_SLICE per piece; in NHWC where the input already is, so no transpose is added."""
    x_name = node.inputs[0]
    shape = low.shape(x_name)
    axis = int(node.attrs.get("axis", 0)) % len(shape)
    sizes = _split_sizes(low, node, shape[axis])
    layout = "nhwc" if len(shape) == 4 and low.native_layout(x_name) == "nhwc" else "plain"
    physical = NHWC_AXIS[axis] if layout == "nhwc" else axis
    x = low.tensor(x_name, layout)
    outs = []
    for out_name, size in zip(node.outputs, sizes):
        out_shape = list(shape)
        out_shape[axis] = size
        outs.append(low.define(out_name, out_shape, layout))
    if len(set(sizes)) == 1:
        axis_const = low.graph.const(f"{node.name}/axis", np.array(physical, dtype=np.int32))
        low.emit("SPLIT", [axis_const, x], outs, num_splits=len(sizes))
        return
    physical_shape = list(low.graph.tensors[x].shape)
    start = 0
    for k, (out, size) in enumerate(zip(outs, sizes)):
        begin, end = [0] * len(shape), list(physical_shape)
        begin[physical], end[physical] = start, start + size
        consts = [
            low.graph.const(f"{node.name}/{k}/{name}", np.array(v, dtype=np.int32))
            for name, v in (("begin", begin), ("end", end), ("strides", [1] * len(shape)))
        ]
        low.emit("STRIDED_SLICE", [x, *consts], [out])
        start += size
