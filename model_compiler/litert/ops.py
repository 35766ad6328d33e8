"""Per-op lowering table: one function per ONNX op type, each emitting TFLite-shaped IR ops.

A rule reads its inputs through the Lowering (which picks or converts layouts) and
defines its outputs; shapes are computed here, so the IR is fully static.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from model_compiler.litert.errors import LoweringError, unsupported
from model_compiler.litert.fold import fold, reshape_target
from model_compiler.litert.graph import Lowering
from model_compiler.litert.prepass import Node

Rule = Callable[[Lowering, Node], None]
NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}
_F32_MIN = float(np.finfo(np.float32).min)


def _attr_pair(node: Node, key: str, default: int, rank: int = 2) -> list[int]:
    return [int(v) for v in node.attrs.get(key, [default] * rank)]


def _same_pads(size: int, k_eff: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def _spatial_padding(low: Lowering, node: Node, hw: tuple[int, int], k_eff: tuple[int, int], strides: list[int]) -> tuple[str, list[int]]:
    """("SAME" | "VALID" | "EXPLICIT", [top, left, bottom, right]) from ONNX auto_pad/pads."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return "VALID", [0, 0, 0, 0]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [_same_pads(hw[i], k_eff[i], strides[i]) for i in range(2)]
        if auto == "SAME_UPPER":
            return "SAME", [0, 0, 0, 0]
        return "EXPLICIT", [pads[0][1], pads[1][1], pads[0][0], pads[1][0]]
    pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
    if len(pads) != 4:
        raise unsupported(node.op_type, node.name, f"pads {pads} (only 2-D spatial ops)")
    if not any(pads):
        return "VALID", pads
    same = [_same_pads(hw[i], k_eff[i], strides[i]) for i in range(2)]
    if (pads[0], pads[2]) == same[0] and (pads[1], pads[3]) == same[1]:
        return "SAME", pads
    return "EXPLICIT", pads


def _out_size(size: int, k_eff: int, stride: int, before: int, after: int, ceil: bool = False) -> int:
    span = size + before + after - k_eff
    return (-(-span // stride) if ceil else span // stride) + 1


def _pad(low: Lowering, x: int, shape_nhwc: tuple[int, ...], pads: list[int], value: float | None = None) -> tuple[int, tuple[int, ...]]:
    """An explicit PAD (zeros) or PADV2 (`value`) before a VALID conv/pool."""
    t, l, b, r = pads
    paddings = np.array([[0, 0], [t, b], [l, r], [0, 0]], dtype=np.int32)
    n, h, w, c = shape_nhwc
    out_shape = (n, h + t + b, w + l + r, c)
    name = f"{low.node.name}/pad"
    out = low.temp(name, out_shape)
    pad_index = low.graph.const(f"{name}/paddings", paddings)
    if value is None:
        low.emit("PAD", [x, pad_index], [out])
    else:
        low.emit("PADV2", [x, pad_index, low.graph.const(f"{name}/value", np.array([value], dtype=np.float32))], [out])
    return out, out_shape


def conv(low: Lowering, node: Node) -> None:
    x_name, w_name = node.inputs[0], node.inputs[1]
    weight = low.const(w_name)
    if weight is None:
        raise unsupported("Conv", node.name, "weights must be constant")
    if weight.ndim != 4 or len(low.shape(x_name)) != 4:
        raise unsupported("Conv", node.name, f"only 2-D convolution (weights {list(weight.shape)})")
    bias = low.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(weight.shape[0], np.float32)
    if bias is None:
        raise unsupported("Conv", node.name, "bias must be constant")
    n, c, h, w = low.shape(x_name)
    o, cg, kh, kw = weight.shape
    group = int(node.attrs.get("group", 1))
    strides = _attr_pair(node, "strides", 1)
    dil = _attr_pair(node, "dilations", 1)
    k_eff = ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1)
    mode, pads = _spatial_padding(low, node, (h, w), k_eff, strides)
    x = low.tensor(x_name, "nhwc")
    if mode == "EXPLICIT":
        x, _ = _pad(low, x, (n, h, w, c), pads)
        mode, pads_used = "VALID", pads
    else:
        pads_used = pads if mode == "SAME" else [0, 0, 0, 0]
    oh = _out_size(h, k_eff[0], strides[0], pads_used[0], pads_used[2]) if mode != "SAME" else -(-h // strides[0])
    ow = _out_size(w, k_eff[1], strides[1], pads_used[1], pads_used[3]) if mode != "SAME" else -(-w // strides[1])
    out = low.define(node.outputs[0], (n, o, oh, ow), "nhwc")
    opts = dict(padding=mode, stride_h=strides[0], stride_w=strides[1], dilation_h=dil[0], dilation_w=dil[1])
    bias = bias.astype(np.float32)
    if group == 1:
        wi = low.graph.const(f"{node.name}/weight", weight.transpose(0, 2, 3, 1).astype(np.float32))
        low.emit("CONV_2D", [x, wi, low.graph.const(f"{node.name}/bias", bias)], [out], **opts)
    elif group == c and cg == 1:
        wi = low.graph.const(f"{node.name}/weight", weight.reshape(o, kh, kw).transpose(1, 2, 0)[None].astype(np.float32))
        low.emit("DEPTHWISE_CONV_2D", [x, wi, low.graph.const(f"{node.name}/bias", bias)], [out],
                 depth_multiplier=o // c, **opts)
    else:
        _grouped_conv(low, node, x, weight, bias, group, (n, oh, ow), out, opts)


def _grouped_conv(low: Lowering, node: Node, x: int, weight: np.ndarray, bias: np.ndarray, group: int,
                  out_nhw: tuple[int, int, int], out: int, opts: dict) -> None:
    """SPLIT on channels, one CONV_2D per group, CONCATENATION: portable across delegates."""
    src = low.graph.tensors[x]
    n, h, w, c = src.shape
    og = weight.shape[0] // group
    pieces = [low.temp(f"{node.name}/split{g}", (n, h, w, c // group)) for g in range(group)]
    low.emit("SPLIT", [low.graph.const(f"{node.name}/split_axis", np.array(3, dtype=np.int32)), x], pieces, num_splits=group)
    outs = []
    for g in range(group):
        wg = weight[g * og:(g + 1) * og].transpose(0, 2, 3, 1).astype(np.float32)
        og_t = low.temp(f"{node.name}/group{g}", (*out_nhw, og))
        low.emit("CONV_2D", [pieces[g], low.graph.const(f"{node.name}/weight{g}", wg),
                             low.graph.const(f"{node.name}/bias{g}", bias[g * og:(g + 1) * og])], [og_t], **opts)
        outs.append(og_t)
    low.emit("CONCATENATION", outs, [out], axis=3)


def conv_transpose(low: Lowering, node: Node) -> None:
    """ConvTranspose -> TRANSPOSE_CONV when ONNX's output size is TFLite's VALID or SAME size."""
    x_name = node.inputs[0]
    weight = low.const(node.inputs[1])
    if weight is None or weight.ndim != 4 or len(low.shape(x_name)) != 4:
        raise unsupported("ConvTranspose", node.name, "needs constant 2-D weights")
    if int(node.attrs.get("group", 1)) != 1 or any(d != 1 for d in node.attrs.get("dilations", [1, 1])):
        raise unsupported("ConvTranspose", node.name, "grouped or dilated transposed convolution")
    if any(node.attrs.get("output_padding", [0, 0])) or "output_shape" in node.attrs:
        raise unsupported("ConvTranspose", node.name, "output_padding / output_shape")
    n, c, h, w = low.shape(x_name)
    c_in, c_out, kh, kw = weight.shape
    strides = _attr_pair(node, "strides", 1)
    pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(pads):
        raise unsupported("ConvTranspose", node.name, f"padding {pads} / auto_pad (only unpadded)")
    oh, ow = (h - 1) * strides[0] + kh, (w - 1) * strides[1] + kw
    bias = low.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(c_out, np.float32)
    if bias is None:
        raise unsupported("ConvTranspose", node.name, "bias must be constant")
    x = low.tensor(x_name, "nhwc")
    out = low.define(node.outputs[0], (n, c_out, oh, ow), "nhwc")
    low.emit("TRANSPOSE_CONV", [low.graph.const(f"{node.name}/output_shape", np.array([n, oh, ow, c_out], dtype=np.int32)),
                                low.graph.const(f"{node.name}/weight", weight.transpose(1, 2, 3, 0).astype(np.float32)), x,
                                low.graph.const(f"{node.name}/bias", bias.astype(np.float32))], [out],
             padding="VALID", stride_h=strides[0], stride_w=strides[1])


_RESIZE_MODES = {  # (mode, coordinate_transformation_mode, nearest_mode) -> (kind, align_corners, half_pixel)
    ("nearest", "asymmetric", "floor"): ("RESIZE_NEAREST_NEIGHBOR", False, False),
    ("nearest", "align_corners", "round_prefer_ceil"): ("RESIZE_NEAREST_NEIGHBOR", True, False),
    ("nearest", "half_pixel", "round_prefer_ceil"): ("RESIZE_NEAREST_NEIGHBOR", False, True),
    ("linear", "asymmetric", None): ("RESIZE_BILINEAR", False, False),
    ("linear", "align_corners", None): ("RESIZE_BILINEAR", True, False),
    ("linear", "half_pixel", None): ("RESIZE_BILINEAR", False, True),
    ("linear", "pytorch_half_pixel", None): ("RESIZE_BILINEAR", False, True),  # same unless an output dim is 1
}


def resize(low: Lowering, node: Node) -> None:
    x_name = node.inputs[0]
    shape = low.shape(x_name)
    if len(shape) != 4:
        raise unsupported("Resize", node.name, "only 4-D NCHW input")
    mode = node.attrs.get("mode", "nearest")
    ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest = node.attrs.get("nearest_mode", "round_prefer_floor") if mode == "nearest" else None
    rule = _RESIZE_MODES.get((mode, ctm, nearest))
    if rule is None:
        raise unsupported("Resize", node.name, f"mode={mode} coordinate_transformation_mode={ctm} nearest_mode={nearest}")
    scales = low.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    sizes = low.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    if sizes is not None and sizes.size:
        out_hw = [int(sizes[-2]), int(sizes[-1])]
        if int(sizes[0]) != shape[0] or int(sizes[1]) != shape[1]:
            raise unsupported("Resize", node.name, "resizing the batch or channel axis")
    elif scales is not None and scales.size:
        if scales[0] != 1 or scales[1] != 1:
            raise unsupported("Resize", node.name, "resizing the batch or channel axis")
        out_hw = [int(np.floor(shape[2] * scales[2])), int(np.floor(shape[3] * scales[3]))]
    else:
        raise unsupported("Resize", node.name, "scales or sizes must be constant")
    kind, align, half = rule
    x = low.tensor(x_name, "nhwc")
    out = low.define(node.outputs[0], (shape[0], shape[1], *out_hw), "nhwc")
    fh, fw = out_hw[0] // shape[2], out_hw[1] // shape[3]
    if (kind == "RESIZE_NEAREST_NEIGHBOR" and not align and not half and (fh, fw) != (1, 1)
            and (fh * shape[2], fw * shape[3]) == tuple(out_hw)):
        _repeat_upsample(low, node, x, (shape[0], shape[2], shape[3], shape[1]), fh, fw, out)
        return
    low.emit(kind, [x, low.graph.const(f"{node.name}/size", np.array(out_hw, dtype=np.int32))], [out],
             align_corners=align, half_pixel_centers=half)


def _repeat_upsample(low: Lowering, node: Node, x: int, nhwc: tuple[int, int, int, int], fh: int, fw: int, out: int) -> None:
    """Nearest upsampling by integer factors as RESHAPE + CONCATENATION copies: the same
    values as RESIZE_NEAREST_NEIGHBOR (asymmetric, floor), but XNNPACK delegates these
    ops and not that one, so the graph is not split around every upsample."""
    n, h, w, c = nhwc

    def repeat(src: int, shape5: tuple[int, ...], axis: int, times: int, tag: str) -> int:
        shaped = low.temp(f"{node.name}/{tag}_in", shape5)
        low.emit("RESHAPE", [src, low.graph.const(f"{node.name}/{tag}_shape", np.array(shape5, dtype=np.int32))], [shaped],
                 new_shape=list(shape5))
        grown = list(shape5)
        grown[axis] *= times
        joined = low.temp(f"{node.name}/{tag}", grown)
        low.emit("CONCATENATION", [shaped] * times, [joined], axis=axis, activation="NONE")
        return joined

    cur = repeat(x, (n, h, w, 1, c), 3, fw, "w") if fw > 1 else x
    cur = repeat(cur, (n, h, 1, w * fw, c), 2, fh, "h") if fh > 1 else cur
    final = (n, h * fh, w * fw, c)
    low.emit("RESHAPE", [cur, low.graph.const(f"{node.name}/out_shape", np.array(final, dtype=np.int32))], [out],
             new_shape=list(final))


def _fully_connected(low: Lowering, node: Node, a_name: str, weight: np.ndarray, bias: np.ndarray) -> None:
    """weight is [out, in] (TFLite's FULLY_CONNECTED layout)."""
    a_shape = low.shape(a_name)
    if a_shape[-1] != weight.shape[1]:
        raise LoweringError(f"{node.op_type} node {node.name!r}: input has {a_shape[-1]} features, weights expect {weight.shape[1]}")
    a = low.tensor(a_name, "plain")
    out_shape = (*a_shape[:-1], weight.shape[0])
    out = low.define(node.outputs[0], out_shape)
    low.emit("FULLY_CONNECTED", [a, low.graph.const(f"{node.name}/weight", weight.astype(np.float32)),
                                 low.graph.const(f"{node.name}/bias", bias.astype(np.float32))], [out],
             keep_num_dims=len(a_shape) > 2)


def matmul(low: Lowering, node: Node) -> None:
    b = low.const(node.inputs[1])
    if b is None or b.ndim != 2:
        raise unsupported("MatMul", node.name, "the second operand must be a constant 2-D matrix")
    bias = low.const(node.inputs[2]) if len(node.inputs) > 2 else np.zeros(b.shape[1], np.float32)
    _fully_connected(low, node, node.inputs[0], b.T, bias)


def gemm(low: Lowering, node: Node) -> None:
    b = low.const(node.inputs[1])
    if b is None or node.attrs.get("transA", 0):
        raise unsupported("Gemm", node.name, "needs a constant B and transA=0")
    weight = (b if node.attrs.get("transB", 0) else b.T) * float(node.attrs.get("alpha", 1.0))
    bias = np.zeros(weight.shape[0], np.float32)
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
    if rank == 4 and any(low.native_layout(n) == "nhwc" for n in dynamic) and all(len(low.shape(n)) == 4 for n in dynamic):
        return "nhwc", rank
    return "plain", rank


def _elementwise(kind: str) -> Rule:
    def rule(low: Lowering, node: Node) -> None:
        a_name, b_name = node.inputs[0], node.inputs[1]
        op_kind = kind
        if kind == "DIV":
            divisor = low.const(b_name)
            if divisor is None:
                raise unsupported("Div", node.name, "the divisor must be a constant (TFLite int8 has no general DIV)")
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
        nxt = low.define(node.outputs[0], low.shape(x_name), layout) if last else low.temp(f"{node.name}/step{k}", shape)
        low.emit(kind, [cur, low.graph.const(f"{node.name}/c{k}", np.array(scalar, dtype=np.float32))], [nxt], activation=act)
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
    low.emit("ADD", [x, low.graph.const(f"{node.name}/three", np.array(3.0, dtype=np.float32))], [gate], activation="RELU6")
    scaled = low.temp(f"{node.name}/gate", shape)
    low.emit("MUL", [gate, low.graph.const(f"{node.name}/sixth", np.array(1 / 6, dtype=np.float32))], [scaled], activation="NONE")
    out = low.define(node.outputs[0], low.shape(x_name), layout)
    low.emit("MUL", [x, scaled], [out], activation="NONE")


def _clip_bounds(low: Lowering, node: Node) -> tuple[float, float]:
    lo, hi = node.attrs.get("min", _F32_MIN), node.attrs.get("max", -_F32_MIN)
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
    kind = {(0.0, 6.0): "RELU6", (0.0, -_F32_MIN): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}.get((lo, hi))
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
    low.emit("MAXIMUM", [x, low.graph.const(f"{node.name}/lo", np.array(lo, dtype=np.float32))], [mid], clamp_output=out)
    low.emit("MINIMUM", [mid, low.graph.const(f"{node.name}/hi", np.array(hi, dtype=np.float32))], [out], clamp_output=out)


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
    if physical_axis != rank - 1:
        raise unsupported("Softmax", node.name, f"axis {axis} is not the last axis of a rank-{rank} tensor")
    x = low.tensor(x_name, layout)
    out = low.define(node.outputs[0], low.shape(x_name), layout)
    low.emit("SOFTMAX", [x], [out], beta=1.0)


def _pool(kind: str) -> Rule:
    def rule(low: Lowering, node: Node) -> None:
        x_name = node.inputs[0]
        if len(low.shape(x_name)) != 4:
            raise unsupported(node.op_type, node.name, "only 2-D pooling")
        if len(node.outputs) > 1 and node.outputs[1]:
            raise unsupported(node.op_type, node.name, "the Indices output has no TFLite equivalent")
        if any(d != 1 for d in node.attrs.get("dilations", [1, 1])):
            raise unsupported(node.op_type, node.name, "dilated pooling")
        n, c, h, w = low.shape(x_name)
        kh, kw = [int(k) for k in node.attrs["kernel_shape"]]
        strides = _attr_pair(node, "strides", 1)
        mode, pads = _spatial_padding(low, node, (h, w), (kh, kw), strides)
        ceil = bool(node.attrs.get("ceil_mode", 0))
        x = low.tensor(x_name, "nhwc")
        if mode == "SAME":
            oh, ow = -(-h // strides[0]), -(-w // strides[1])
        else:
            oh = _out_size(h, kh, strides[0], pads[0], pads[2], ceil)
            ow = _out_size(w, kw, strides[1], pads[1], pads[3], ceil)
            if ceil and (oh, ow) != (_out_size(h, kh, strides[0], pads[0], pads[2]), _out_size(w, kw, strides[1], pads[1], pads[3])):
                raise unsupported(node.op_type, node.name, "ceil_mode=1 changes the output size here")
        if mode == "EXPLICIT":
            if kind == "AVERAGE_POOL_2D" and not node.attrs.get("count_include_pad", 0):
                raise unsupported(node.op_type, node.name, f"asymmetric pads {pads} with count_include_pad=0")
            x, _ = _pad(low, x, (n, h, w, c), pads, None if kind == "AVERAGE_POOL_2D" else _F32_MIN)
            mode = "VALID"
        elif mode == "SAME" and kind == "AVERAGE_POOL_2D" and node.attrs.get("count_include_pad", 0):
            x, _ = _pad(low, x, (n, h, w, c), pads)
            mode = "VALID"
        out = low.define(node.outputs[0], (n, c, oh, ow), "nhwc")
        low.emit(kind, [x], [out], padding=mode, stride_h=strides[0], stride_w=strides[1], filter_h=kh, filter_w=kw)
    return rule


def _global_pool(kind: str) -> Rule:
    def rule(low: Lowering, node: Node) -> None:
        x_name = node.inputs[0]
        if len(low.shape(x_name)) != 4:
            raise unsupported(node.op_type, node.name, "only 4-D NCHW input")
        n, c, _, _ = low.shape(x_name)
        x = low.tensor(x_name, "nhwc")
        out = low.define(node.outputs[0], (n, c, 1, 1), "nhwc")
        low.emit(kind, [x, low.graph.const(f"{node.name}/axes", np.array([1, 2], dtype=np.int32))], [out], keep_dims=True)
    return rule


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
    low.emit("RESHAPE", [x, low.graph.const(f"{node.name}/shape", np.array(out_shape, dtype=np.int32))], [out],
             new_shape=list(out_shape))


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
    probe = fold(node.op_type, [np.zeros(low.shape(node.inputs[0]), np.float32)] + [low.const(n) for n in node.inputs[1:]], node.attrs)
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
    gamma, beta, mean, var = (c.astype(np.float64) for c in consts)
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
    low.set_const(node.outputs[0], fold(node.op_type, inputs, node.attrs))


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
    "AveragePool": _pool("AVERAGE_POOL_2D"),
    "MaxPool": _pool("MAX_POOL_2D"),
    "GlobalAveragePool": _global_pool("MEAN"),
    "GlobalMaxPool": _global_pool("REDUCE_MAX"),
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
    "Slice": constant_fold,
    "Gather": constant_fold,
}
