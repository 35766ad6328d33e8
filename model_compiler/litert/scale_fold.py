"""An int8-only fold: a weighted op with a fused RELU6 followed by MUL(c > 0) becomes that op alone,
with weights and bias times c and its int8 output spanning exactly [0, 6c].

y = c * relu6(z) = clip(c z, 0, 6c). A float TFLite graph cannot fuse that clip, but in int8 an output
whose parameters span exactly [0, 6c] saturates at 6c, and the fused RELU clamps at 0, so the MUL
(1/6 after every squeeze-excitation gate in PP-OCR, see prepass.fold_hardsigmoid) costs nothing.
"""

from __future__ import annotations

from tandem.model_compiler.litert.ir import Graph, Op

WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
SATURATE = "saturate_to"  # op option: the output range its int8 parameters must keep exactly


def _positive_scalar(graph: Graph, index: int) -> float | None:
    t = graph.tensors[index]
    if t.data is None or t.data.size != 1 or t.dtype != "float32":
        return None
    value = float(t.data.reshape(-1)[0])
    return value if value > 0 else None


def _only_used_by(graph: Graph, index: int, op: Op) -> bool:
    users = graph.consumers(index)
    return len(users) == 1 and users[0] is op and index not in graph.outputs


def fold_relu6_scale(graph: Graph, ranges: dict[int, tuple[float, float]]) -> dict[int, tuple[float, float]]:
    """Apply the fold in place on `graph` (a float IR about to be quantized); the ranges to quantize with."""
    ranges = dict(ranges)
    for op in list(graph.ops):
        if op.kind not in WEIGHTED or op.options.get("activation") != "RELU6":
            continue
        out = op.outputs[0]
        users = graph.consumers(out)
        if len(users) != 1 or users[0].kind != "MUL" or out in graph.outputs:
            continue
        mul = users[0]
        other = mul.inputs[1] if mul.inputs[0] == out else mul.inputs[0]
        c = _positive_scalar(graph, other)
        params = [i for i in op.inputs[1:3] if i >= 0]
        if c is None or not all(_only_used_by(graph, i, op) for i in params):
            continue
        for i in params:
            t = graph.tensors[i]
            assert t.data is not None, f"{t.name!r}: weights and bias are constants"
            t.data = (t.data.astype("float64") * c).astype(t.data.dtype)
        op.options["activation"] = "RELU"
        op.options[SATURATE] = (0.0, 6.0 * c)
        op.outputs = list(mul.outputs)
        ranges[mul.outputs[0]] = (0.0, 6.0 * c)
        graph.ops.remove(mul)
    return ranges
