"""Per-op lowering table: one function per ONNX op type, each emitting TFLite-shaped IR ops.

A rule reads its inputs through the Lowering (which picks or converts layouts) and
defines its outputs; shapes are computed here, so the IR is fully static.
"""

from __future__ import annotations

import numpy as np

from tandem.model_compiler.litert.errors import LoweringError, unsupported
from tandem.model_compiler.litert.fold import fold, reshape_target
from tandem.model_compiler.litert.graph import Lowering
from tandem.model_compiler.litert.prepass import Node
from tandem.model_compiler.litert.spatial import F32_MIN, Rule, conv, conv_transpose, global_pool, pool, resize
from tandem.model_compiler.litert.tensor_ops import batch_matmul, pow_op, reduce_mean, slice_op, split_op

NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


def _fully_connected(low: Lowering, node: Node, a_name: str, weight: np.ndarray, bias: np.ndarray) -> None:
    """weight is [out, in] (TFLite's FULLY_CONNECTED layout)."""
    a_shape = low.shape(a_name)
    if a_shape[-1] != weight.shape[1]:
        raise LoweringError(
            f"{node.op_type} node {node.name!r}: input has {a_shape[-1]} features, weights expect {weight.shape[1]}"
        )
    a = low.tensor(a_name, "plain")
    out_shape = (*a_shape[:-1], weight.shape[0])
    out = low.define(node.outputs[0], out_shape)
    low.emit(
        "FULLY_CONNECTED",
        [
            a,
            low.graph.const(f"{node.name}/weight", weight.astype(np.float32)),
            low.graph.const(f"{node.name}/bias", bias.astype(np.float32)),
        ],
        [out],
        keep_num_dims=len(a_shape) != 2,  # a vector [in] stays [out], not [1, out]
    )


def matmul(low: Lowering, node: Node) -> None:
    b = low.const(node.inputs[1])
    if b is None:
        batch_matmul(low, node)
        return
    if b.ndim != 2:
        raise unsupported("MatMul", node.name, "a constant second operand must be a 2-D matrix")
    bias = low.const(node.inputs[2]) if len(node.inputs) > 2 else np.zeros(b.shape[1], np.float32)
    assert bias is not None, f"MatMul {node.name!r}: bias {node.inputs[2]!r} is not a constant"
    _fully_connected(low, node, node.inputs[0], b.T, bias)


def gemm(low: Lowering, node: Node) -> None:
    b = low.const(node.inputs[1])
    if b is None or node.attrs.get("transA", 0):
        raise unsupported("Gemm", node.name, "needs a constant B and transA=0")
    weight = (b if node.attrs.get("transB", 0) else b.T) * float(node.attrs.get("alpha", 1.0))
    bias: np.ndarray = np.zeros(weight.shape[0], np.float32)
    if len(node.inputs) > 2 and node.inputs[2]:
        c = low.const(node.inputs[2])
        if c is None or c.size not in (1, weight.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise unsupported("Gemm", node.name, "C must be a constant per-output bias")
        bias = np.broadcast_to(c.reshape(-1), (weight.shape[0],)) * float(node.attrs.get("beta", 1.0))
    if len(low.shape(node.inputs[0])) != 2:
        raise unsupported("Gemm", node.name, "A must be 2-D")
    _fully_connected(low, node, node.inputs[0], weight, bias)


def _binary_layout(low: Lowering, names: list[str]) -> tuple[str, int]:
    dynamic = [n for n in names if low.const(n) is None]
    shapes = [low.shape(n) for n in names]
    rank = len(np.broadcast_shapes(*shapes))
    if (
        rank == 4
        and any(low.native_layout(n) == "nhwc" for n in dynamic)
        and all(len(low.shape(n)) == 4 for n in dynamic)
    ):
        return "nhwc", rank
    return "plain", rank


def _elementwise(kind: str) -> Rule:
    def rule(low: Lowering, node: Node) -> None:
        a_name, b_name = node.inputs[0], node.inputs[1]
        op_kind = kind
        divisor = low.const(b_name) if kind == "DIV" else None
        if divisor is not None:  # DIV by a constant: MUL by its reciprocal (int8-capable)
            low.set_const(f"{b_name}/reciprocal", (1.0 / divisor.astype(np.float64)).astype(np.float32))
            b_name, op_kind = f"{b_name}/reciprocal", "MUL"
        layout, rank = _binary_layout(low, [a_name, b_name])
        out_shape = np.broadcast_shapes(low.shape(a_name), low.shape(b_name))
        a, b = low.operand(a_name, layout, rank), low.operand(b_name, layout, rank)
        out = low.define(node.outputs[0], out_shape, layout)
        low.emit(op_kind, [a, b], [out], activation="NONE")

    return rule


def _unary(kind: str) -> Rule:
    def rule(low: Lowering, node: Node) -> None:
        x_name = node.inputs[0]
        layout = low.native_layout(x_name)
        x = low.tensor(x_name, layout)
        out = low.define(node.outputs[0], low.shape(x_name), layout)
        low.emit(kind, [x], [out])

    return rule


def _chain(low: Lowering, node: Node, steps: list[tuple[str, float, str]]) -> None:
    """x -> MUL/ADD by scalars, each with an optional fused activation: for HardSigmoid and the like."""
    x_name = node.inputs[0]
    layout = low.native_layout(x_name)
    cur = low.tensor(x_name, layout)
    shape = low.graph.tensors[cur].shape
    for k, (kind, scalar, act) in enumerate(steps):
        last = k == len(steps) - 1
        nxt = (
            low.define(node.outputs[0], low.shape(x_name), layout) if last else low.temp(f"{node.name}/step{k}", shape)
        )
        low.emit(
            kind, [cur, low.graph.const(f"{node.name}/c{k}", np.array(scalar, dtype=np.float32))], [nxt], activation=act
        )
        cur = nxt


def hard_sigmoid(low: Lowering, node: Node) -> None:
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    # clip(alpha*x + beta, 0, 1) == relu6(6*alpha*x + 6*beta) / 6, all int8-capable builtins.
    _chain(low, node, [("MUL", 6 * alpha, "NONE"), ("ADD", 6 * beta, "RELU6"), ("MUL", 1 / 6, "NONE")])


def hard_swish(low: Lowering, node: Node) -> None:
    if not low.for_int8:
        _unary("HARD_SWISH")(low, node)
        return
    # x * relu6(x + 3) / 6 in ops whose int8 kernels XNNPACK delegates.
    x_name = node.inputs[0]
    layout = low.native_layout(x_name)
    x = low.tensor(x_name, layout)
    shape = low.graph.tensors[x].shape
    gate = low.temp(f"{node.name}/relu6", shape)
    low.emit(
        "ADD", [x, low.graph.const(f"{node.name}/three", np.array(3.0, dtype=np.float32))], [gate], activation="RELU6"
    )
    scaled = low.temp(f"{node.name}/gate", shape)
    low.emit(
        "MUL",
        [gate, low.graph.const(f"{node.name}/sixth", np.array(1 / 6, dtype=np.float32))],
        [scaled],
        activation="NONE",
    )
    out = low.define(node.outputs[0], low.shape(x_name), layout)
    low.emit("MUL", [x, scaled], [out], activation="NONE")


def _clip_bounds(low: Lowering, node: Node) -> tuple[float, float]:
    lo, hi = node.attrs.get("min", F32_MIN), node.attrs.get("max", -F32_MIN)
    if len(node.inputs) > 1 and node.inputs[1]:
        c = low.const(node.inputs[1])
        if c is None:
            raise unsupported("Clip", node.name, "min must be constant")
        lo = float(c)
    if len(node.inputs) > 2 and node.inputs[2]:
        c = low.const(node.inputs[2])
        if c is None:
            raise unsupported("Clip", node.name, "max must be constant")
        hi = float(c)
    return float(lo), float(hi)


def clip(low: Lowering, node: Node) -> None:
    lo, hi = _clip_bounds(low, node)
    kind = {(0.0, 6.0): "RELU6", (0.0, -F32_MIN): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}.get((lo, hi))
    if kind:
        _unary(kind)(low, node)
        return
    x_name = node.inputs[0]
    layout = low.native_layout(x_name)
    x = low.tensor(x_name, layout)
    shape = low.graph.tensors[x].shape
    mid = low.temp(f"{node.name}/max", shape)
    out = low.define(node.outputs[0], low.shape(x_name), layout)
    # clamp_output tells the int8 quantizer which range the pair finally produces.
    low.emit(
        "MAXIMUM", [x, low.graph.const(f"{node.name}/lo", np.array(lo, dtype=np.float32))], [mid], clamp_output=out
    )
    low.emit(
        "MINIMUM", [mid, low.graph.const(f"{node.name}/hi", np.array(hi, dtype=np.float32))], [out], clamp_output=out
    )


def leaky_relu(low: Lowering, node: Node) -> None:
    x_name = node.inputs[0]
    layout = low.native_layout(x_name)
    x = low.tensor(x_name, layout)
    out = low.define(node.outputs[0], low.shape(x_name), layout)
    low.emit("LEAKY_RELU", [x], [out], alpha=float(node.attrs.get("alpha", 0.01)))


def softmax(low: Lowering, node: Node) -> None:
    x_name = node.inputs[0]
    rank = len(low.shape(x_name))
    axis = int(node.attrs.get("axis", -1)) % rank
    layout = low.native_layout(x_name)
    physical_axis = NHWC_AXIS[axis] if layout == "nhwc" else axis
    if physical_axis != rank - 1:
        layout, physical_axis = "plain", axis
    if physical_axis != rank - 1 and rank == 4 and axis == 1:
        # Softmax over channels (YOLOv8's DFL head, before a 1x1 Conv): channels are last in NHWC.
        layout, physical_axis = "nhwc", 3
    if physical_axis != rank - 1:
        raise unsupported("Softmax", node.name, f"axis {axis} is not the last axis of a rank-{rank} tensor")
    x = low.tensor(x_name, layout)
    out = low.define(node.outputs[0], low.shape(x_name), layout)
    low.emit("SOFTMAX", [x], [out], beta=1.0)


def _as_plain_reshape(low: Lowering, node: Node, out_shape: tuple[int, ...]) -> None:
    x_name = node.inputs[0]
    shape = low.shape(x_name)
    if int(np.prod(shape)) != int(np.prod(out_shape)):
        raise LoweringError(f"{node.op_type} node {node.name!r}: cannot reshape {list(shape)} to {list(out_shape)}")
    if tuple(shape) == tuple(out_shape) and "plain" in low.value(x_name).tensors:
        low.alias(node.outputs[0], x_name)  # a no-op reshape (version converters add them around Softmax)
        return
    # A [N, C, 1, 1] tensor has the same memory order in NHWC: reshape it directly.
    if low.native_layout(x_name) == "nhwc" and shape[2] * shape[3] == 1:
        x = low.tensor(x_name, "nhwc")
    else:
        x = low.tensor(x_name, "plain")
    out = low.define(node.outputs[0], out_shape)
    target = list(out_shape)
    if shape and target and shape[0] == target[0] == 1:
        target[0] = -1  # keeps the batch axis free, so the session can resize the model to a batch
    low.emit(
        "RESHAPE", [x, low.graph.const(f"{node.name}/shape", np.array(target, dtype=np.int32))], [out], new_shape=target
    )


def reshape(low: Lowering, node: Node) -> None:
    target = low.const(node.inputs[1])
    if target is None:
        raise unsupported("Reshape", node.name, "the target shape must be constant at static input shapes")
    _as_plain_reshape(low, node, reshape_target(low.shape(node.inputs[0]), target, node.attrs.get("allowzero", 0)))


def flatten(low: Lowering, node: Node) -> None:
    shape = low.shape(node.inputs[0])
    axis = int(node.attrs.get("axis", 1)) % (len(shape) + 1) if shape else 0
    _as_plain_reshape(low, node, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))


def squeeze_like(low: Lowering, node: Node) -> None:
    probe = fold(
        node.op_type,
        [np.zeros(low.shape(node.inputs[0]), np.float32), *(low.const(n) for n in node.inputs[1:])],
        node.attrs,
    )
    assert probe is not None, f"{node.op_type} has a folder"
    _as_plain_reshape(low, node, tuple(probe.shape))


def transpose(low: Lowering, node: Node) -> None:
    x_name = node.inputs[0]
    shape = low.shape(x_name)
    perm = [int(p) for p in node.attrs.get("perm", list(range(len(shape)))[::-1])]
    layout = low.native_layout(x_name)
    physical = [(0, 3, 1, 2)[p] for p in perm] if layout == "nhwc" else perm
    out_shape = tuple(shape[p] for p in perm)
    x = low.tensor(x_name, layout)
    if physical == list(range(len(shape))):
        low.values[node.outputs[0]] = type(low.value(x_name))(out_shape, None, {"plain": x})
        return
    out = low.define(node.outputs[0], out_shape)
    low.emit("TRANSPOSE", [x, low.graph.const(f"{node.name}/perm", np.array(physical, dtype=np.int32))], [out])


def concat(low: Lowering, node: Node) -> None:
    names = [n for n in node.inputs if n]
    shapes = [low.shape(n) for n in names]
    rank = len(shapes[0])
    axis = int(node.attrs["axis"]) % rank
    dynamic = [n for n in names if low.const(n) is None]
    layout = "nhwc" if rank == 4 and dynamic and all(low.native_layout(n) == "nhwc" for n in dynamic) else "plain"
    ins = [low.tensor(n, layout) for n in names]
    out_shape = list(shapes[0])
    out_shape[axis] = sum(s[axis] for s in shapes)
    out = low.define(node.outputs[0], out_shape, layout)
    low.emit("CONCATENATION", ins, [out], axis=NHWC_AXIS[axis] if layout == "nhwc" else axis, activation="NONE")


def batchnorm(low: Lowering, node: Node) -> None:
    """A BatchNormalization not after a Conv: per-channel MUL then ADD."""
    consts = [low.const(n) for n in node.inputs[1:5]]
    if any(c is None for c in consts):
        raise unsupported("BatchNormalization", node.name, "scale, bias, mean and variance must be constant")
    gamma, beta, mean, var = (c.astype(np.float64) for c in consts if c is not None)
    factor = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    shift = beta - mean * factor
    x_name = node.inputs[0]
    rank = len(low.shape(x_name))
    layout = low.native_layout(x_name)
    bshape = (-1,) + (1,) * (rank - 2)
    low.set_const(f"{node.name}/factor", factor.astype(np.float32).reshape(bshape))
    low.set_const(f"{node.name}/shift", shift.astype(np.float32).reshape(bshape))
    x = low.tensor(x_name, layout)
    mid_name = f"{node.name}/scaled"
    mid = low.define(mid_name, low.shape(x_name), layout)
    low.emit("MUL", [x, low.operand(f"{node.name}/factor", layout, rank)], [mid], activation="NONE")
    out = low.define(node.outputs[0], low.shape(x_name), layout)
    low.emit("ADD", [mid, low.operand(f"{node.name}/shift", layout, rank)], [out], activation="NONE")


def identity(low: Lowering, node: Node) -> None:
    low.alias(node.outputs[0], node.inputs[0])


def cast(low: Lowering, node: Node) -> None:
    from onnx import TensorProto

    if node.attrs.get("to") != TensorProto.FLOAT:
        raise unsupported("Cast", node.name, "only casts to float32 of float32 tensors")
    low.alias(node.outputs[0], node.inputs[0])


def shape_op(low: Lowering, node: Node) -> None:
    shape = np.array(low.shape(node.inputs[0]), dtype=np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    low.set_const(node.outputs[0], shape[start:end])


def constant_fold(low: Lowering, node: Node) -> None:
    """Shape-derived values (e.g. Gather of a Shape) that became constant only at static shapes."""
    inputs = [low.const(n) if n else None for n in node.inputs]
    if any(v is None for n, v in zip(node.inputs, inputs) if n):
        raise unsupported(node.op_type, node.name, "supported only on constant (shape) inputs")
    value = fold(node.op_type, inputs, node.attrs)
    if value is None:  # never store np.asarray(None): a 0-d object array breaks whatever consumes it
        raise unsupported(node.op_type, node.name, "all inputs are constant, but there is no constant folding for it")
    low.set_const(node.outputs[0], value)


def _fold_or(rule: Rule) -> Rule:
    def wrapped(low: Lowering, node: Node) -> None:
        if all(low.const(n) is not None for n in node.inputs if n):
            constant_fold(low, node)
        else:
            rule(low, node)

    return wrapped


LOWERINGS: dict[str, Rule] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Resize": resize,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batchnorm,
    "Relu": _unary("RELU"),
    "Clip": clip,
    "LeakyRelu": leaky_relu,
    "Sigmoid": _unary("LOGISTIC"),
    "Tanh": _unary("TANH"),
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "Add": _fold_or(_elementwise("ADD")),
    "Sub": _fold_or(_elementwise("SUB")),
    "Mul": _fold_or(_elementwise("MUL")),
    "Div": _fold_or(_elementwise("DIV")),
    "AveragePool": pool("AVERAGE_POOL_2D"),
    "MaxPool": pool("MAX_POOL_2D"),
    "GlobalAveragePool": global_pool("MEAN"),
    "GlobalMaxPool": global_pool("REDUCE_MAX"),
    "Reshape": _fold_or(reshape),
    "Flatten": _fold_or(flatten),
    "Squeeze": _fold_or(squeeze_like),
    "Unsqueeze": _fold_or(squeeze_like),
    "Transpose": _fold_or(transpose),
    "Concat": _fold_or(concat),
    "Softmax": softmax,
    "Identity": identity,
    "Dropout": identity,
    "Cast": _fold_or(cast),
    "Shape": shape_op,
    "Slice": _fold_or(slice_op),
    "Split": split_op,
    "ReduceMean": reduce_mean,
    "Pow": _fold_or(pow_op),
    "Sqrt": _fold_or(_unary("SQRT")),
    "Rsqrt": _unary("RSQRT"),  # from prepass.match_rsqrt
    "Gather": constant_fold,
    "Range": constant_fold,
    "ConstantOfShape": constant_fold,
    "Expand": constant_fold,
}
