"""Lowering rules for the spatial (NHWC) ops: convolutions, transposed convolutions,
pooling and resizing, with ONNX explicit padding mapped to TFLite SAME/VALID or a PAD.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tandem.model_compiler.litert.errors import unsupported
from tandem.model_compiler.litert.graph import Lowering
from tandem.model_compiler.litert.prepass import Node

Rule = Callable[[Lowering, Node], None]
F32_MIN = float(np.finfo(np.float32).min)


def _attr_pair(node: Node, key: str, default: int, rank: int = 2) -> list[int]:
    return [int(v) for v in node.attrs.get(key, [default] * rank)]


def _same_pads(size: int, k_eff: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2


def _spatial_padding(
    low: Lowering, node: Node, hw: tuple[int, int], k_eff: tuple[int, int], strides: list[int]
) -> tuple[str, list[int]]:
    """("SAME" | "VALID" | "EXPLICIT", [top, left, bottom, right]) from ONNX auto_pad/pads."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return "VALID", [0, 0, 0, 0]
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        same_pads = [_same_pads(hw[i], k_eff[i], strides[i]) for i in range(2)]
        if auto == "SAME_UPPER":
            return "SAME", [0, 0, 0, 0]
        return "EXPLICIT", [same_pads[0][1], same_pads[1][1], same_pads[0][0], same_pads[1][0]]
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


def _pad(
    low: Lowering, x: int, shape_nhwc: tuple[int, ...], pads: list[int], value: float | None = None
) -> tuple[int, tuple[int, ...]]:
    """An explicit PAD (zeros) or PADV2 (`value`) before a VALID conv/pool."""
    t, l, b, r = pads  # noqa: E741  (top, left, bottom, right: the ONNX pads order)
    paddings = np.array([[0, 0], [t, b], [l, r], [0, 0]], dtype=np.int32)
    n, h, w, c = shape_nhwc
    out_shape = (n, h + t + b, w + l + r, c)
    assert low.node is not None, "a PAD is emitted while lowering a node"
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
    bias = (
        low.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.zeros(weight.shape[0], np.float32)
    )
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
        wi = low.graph.const(
            f"{node.name}/weight", weight.reshape(o, kh, kw).transpose(1, 2, 0)[None].astype(np.float32)
        )
        low.emit(
            "DEPTHWISE_CONV_2D",
            [x, wi, low.graph.const(f"{node.name}/bias", bias)],
            [out],
            depth_multiplier=o // c,
            **opts,
        )
    else:
        _grouped_conv(low, node, x, weight, bias, group, (n, oh, ow), out, opts)


def _grouped_conv(
    low: Lowering,
    node: Node,
    x: int,
    weight: np.ndarray,
    bias: np.ndarray,
    group: int,
    out_nhw: tuple[int, int, int],
    out: int,
    opts: dict,
) -> None:
    """SPLIT on channels, one CONV_2D per group, CONCATENATION: portable across delegates."""
    src = low.graph.tensors[x]
    n, h, w, c = src.shape
    og = weight.shape[0] // group
    pieces = [low.temp(f"{node.name}/split{g}", (n, h, w, c // group)) for g in range(group)]
    low.emit(
        "SPLIT", [low.graph.const(f"{node.name}/split_axis", np.array(3, dtype=np.int32)), x], pieces, num_splits=group
    )
    outs = []
    for g in range(group):
        wg = weight[g * og : (g + 1) * og].transpose(0, 2, 3, 1).astype(np.float32)
        og_t = low.temp(f"{node.name}/group{g}", (*out_nhw, og))
        low.emit(
            "CONV_2D",
            [
                pieces[g],
                low.graph.const(f"{node.name}/weight{g}", wg),
                low.graph.const(f"{node.name}/bias{g}", bias[g * og : (g + 1) * og]),
            ],
            [og_t],
            **opts,
        )
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
    if kh == kw == strides[0] == strides[1] > 1:
        _pixel_shuffle_deconv(low, node, x, weight, bias, out)
        return
    low.emit(
        "TRANSPOSE_CONV",
        [
            low.graph.const(f"{node.name}/output_shape", np.array([n, oh, ow, c_out], dtype=np.int32)),
            low.graph.const(f"{node.name}/weight", weight.transpose(1, 2, 3, 0).astype(np.float32)),
            x,
            low.graph.const(f"{node.name}/bias", bias.astype(np.float32)),
        ],
        [out],
        padding="VALID",
        stride_h=strides[0],
        stride_w=strides[1],
    )


def _pixel_shuffle_deconv(low: Lowering, node: Node, x: int, weight: np.ndarray, bias: np.ndarray, out: int) -> None:
    """A ConvTranspose whose kernel equals its stride (PP-OCRv4 det's 2x2/2 upsampling head) writes
    each input pixel to its own k x k block: a 1x1 CONV_2D to k*k*C_out channels, then
    DEPTH_TO_SPACE. XNNPACK's int8 deconvolution ran these at 7x the FP32 time (78 vs 11 ms of det at
    320x320); as a 1x1 conv they take its fast int8 GEMM."""
    c_in, c_out, k, _ = weight.shape
    n, h, w, _ = low.graph.tensors[x].shape
    # output channel (i*k + j)*C_out + c of the 1x1 conv lands at (h*k + i, w*k + j, c): DEPTH_TO_SPACE's order
    conv_w = weight.transpose(2, 3, 1, 0).reshape(k * k * c_out, 1, 1, c_in)
    wide = low.temp(f"{node.name}/blocks", (n, h, w, k * k * c_out))
    low.emit(
        "CONV_2D",
        [
            x,
            low.graph.const(f"{node.name}/weight", np.ascontiguousarray(conv_w, dtype=np.float32)),
            low.graph.const(f"{node.name}/bias", np.tile(bias.astype(np.float32), k * k)),
        ],
        [wide],
        padding="VALID",
        stride_h=1,
        stride_w=1,
    )
    low.emit("DEPTH_TO_SPACE", [wide], [out], block_size=k)


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
        raise unsupported(
            "Resize", node.name, f"mode={mode} coordinate_transformation_mode={ctm} nearest_mode={nearest}"
        )
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
    if (
        kind == "RESIZE_NEAREST_NEIGHBOR"
        and not align
        and not half
        and (fh, fw) != (1, 1)
        and (fh * shape[2], fw * shape[3]) == tuple(out_hw)
    ):
        _repeat_upsample(low, node, x, (shape[0], shape[2], shape[3], shape[1]), fh, fw, out)
        return
    low.emit(
        kind,
        [x, low.graph.const(f"{node.name}/size", np.array(out_hw, dtype=np.int32))],
        [out],
        align_corners=align,
        half_pixel_centers=half,
    )


_MAX_CONCAT_INPUTS = 5


def _repeat_upsample(
    low: Lowering, node: Node, x: int, nhwc: tuple[int, int, int, int], fh: int, fw: int, out: int
) -> None:
    """Nearest upsampling by integer factors as RESHAPE + CONCATENATION copies: the same
    values as RESIZE_NEAREST_NEIGHBOR (asymmetric, floor), but XNNPACK delegates these
    ops and not that one, so the graph is not split around every upsample."""
    n, h, w, c = nhwc

    def repeat(src: int, shape5: tuple[int, ...], axis: int, times: int, tag: str) -> int:
        shaped = low.temp(f"{node.name}/{tag}_in", shape5)
        target = [-1, *shape5[1:]]  # batch left free for a resized session
        low.emit(
            "RESHAPE",
            [src, low.graph.const(f"{node.name}/{tag}_shape", np.array(target, dtype=np.int32))],
            [shaped],
            new_shape=target,
        )
        # XNNPACK delegates a CONCATENATION of at most 5 inputs (PP-OCRv4 det upsamples by 8):
        # join 5 copies first, then that block with the rest
        pieces: list[tuple[int, int]] = [(shaped, 1)] * times
        while len(pieces) > 1:
            group, pieces = pieces[:_MAX_CONCAT_INPUTS], pieces[_MAX_CONCAT_INPUTS:]
            grown = list(shape5)
            grown[axis] *= sum(k for _, k in group)
            name = f"{node.name}/{tag}" if not pieces else f"{node.name}/{tag}{len(pieces)}"
            joined = low.temp(name, grown)
            low.emit("CONCATENATION", [t for t, _ in group], [joined], axis=axis, activation="NONE")
            pieces.insert(0, (joined, sum(k for _, k in group)))
        return pieces[0][0]

    cur = repeat(x, (n, h, w, 1, c), 3, fw, "w") if fw > 1 else x
    cur = repeat(cur, (n, h, 1, w * fw, c), 2, fh, "h") if fh > 1 else cur
    final = [-1, h * fh, w * fw, c]
    low.emit(
        "RESHAPE",
        [cur, low.graph.const(f"{node.name}/out_shape", np.array(final, dtype=np.int32))],
        [out],
        new_shape=final,
    )


def pool(kind: str) -> Rule:
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
            if ceil and (oh, ow) != (
                _out_size(h, kh, strides[0], pads[0], pads[2]),
                _out_size(w, kw, strides[1], pads[1], pads[3]),
            ):
                raise unsupported(node.op_type, node.name, "ceil_mode=1 changes the output size here")
        if mode == "EXPLICIT":
            if kind == "AVERAGE_POOL_2D" and not node.attrs.get("count_include_pad", 0):
                raise unsupported(node.op_type, node.name, f"asymmetric pads {pads} with count_include_pad=0")
            x, _ = _pad(low, x, (n, h, w, c), pads, None if kind == "AVERAGE_POOL_2D" else F32_MIN)
            mode = "VALID"
        elif mode == "SAME" and kind == "AVERAGE_POOL_2D" and node.attrs.get("count_include_pad", 0):
            x, _ = _pad(low, x, (n, h, w, c), pads)
            mode = "VALID"
        out = low.define(node.outputs[0], (n, c, oh, ow), "nhwc")
        low.emit(kind, [x], [out], padding=mode, stride_h=strides[0], stride_w=strides[1], filter_h=kh, filter_w=kw)

    return rule


def global_pool(kind: str) -> Rule:
    def rule(low: Lowering, node: Node) -> None:
        x_name = node.inputs[0]
        if len(low.shape(x_name)) != 4:
            raise unsupported(node.op_type, node.name, "only 4-D NCHW input")
        n, c, _, _ = low.shape(x_name)
        x = low.tensor(x_name, "nhwc")
        out = low.define(node.outputs[0], (n, c, 1, 1), "nhwc")
        low.emit(
            kind, [x, low.graph.const(f"{node.name}/axes", np.array([1, 2], dtype=np.int32))], [out], keep_dims=True
        )

    return rule
