"""ONNX-level rewrites before lowering: constants out of the graph, constant folding,
BatchNorm and bias folding into the layer before, and the HardSwish pattern.

Operates on a light `Node` list and a name -> array table, never on protobufs, so each
rewrite is a pure function that tests can drive directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from tandem.model_compiler.litert.fold import fold

if TYPE_CHECKING:
    from onnx import ModelProto


@dataclass
class Node:
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""


def from_onnx(model: ModelProto) -> tuple[list[Node], dict[str, np.ndarray]]:
    """Nodes and constants (initializers and Constant nodes) of an ONNX model."""
    from onnx import helper, numpy_helper

    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    nodes: list[Node] = []
    for i, proto in enumerate(model.graph.node):
        attrs = {}
        for attr in proto.attribute:
            value = helper.get_attribute_value(attr)
            if hasattr(value, "dims") and hasattr(value, "data_type"):
                value = numpy_helper.to_array(value)
            elif isinstance(value, bytes):
                value = value.decode()
            attrs[attr.name] = value
        node = Node(
            proto.op_type,
            list(proto.input),
            list(proto.output),
            attrs,
            proto.name or f"{proto.op_type}_{i}",
            proto.domain,
        )
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            consts[node.outputs[0]] = _constant_value(attrs)
            continue
        nodes.append(node)
    return nodes, consts


def _constant_value(attrs: dict[str, Any]) -> np.ndarray:
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    raise ValueError(f"Constant node with unsupported attributes {sorted(attrs)}")


def fold_constants(nodes: list[Node], consts: dict[str, np.ndarray]) -> list[Node]:
    """Evaluate nodes whose inputs are all constants (adds their outputs to `consts`)."""
    kept = []
    for node in nodes:
        present = [name for name in node.inputs if name]
        if present and all(name in consts for name in present) and len(node.outputs) == 1:
            value = fold(node.op_type, [consts.get(name) if name else None for name in node.inputs], node.attrs)
            if value is not None:
                consts[node.outputs[0]] = value
                continue
        kept.append(node)
    return kept


def _uses(nodes: list[Node], graph_outputs: set[str]) -> dict[str, int]:
    counts: dict[str, int] = {name: 1 for name in graph_outputs}
    for node in nodes:
        for name in node.inputs:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _single_consumer(nodes: list[Node], index: int, uses: dict[str, int]) -> tuple[int, Node] | None:
    out = nodes[index].outputs[0]
    if uses.get(out, 0) != 1:
        return None
    for j in range(index + 1, len(nodes)):
        if out in nodes[j].inputs:
            return j, nodes[j]
    return None


def _layer_then(
    nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str], layers: tuple[str, ...], consumer: str
) -> Iterator[tuple[Node, int, Node]]:
    """(layer, index of its consumer, consumer) for each op of `layers` with a constant weight whose
    output goes to exactly one op, of type `consumer`: the pattern every fold below starts from.
    The folds rewrite the layer as they go and drop or replace the consumer afterwards."""
    uses = _uses(nodes, graph_outputs)
    for i, node in enumerate(nodes):
        if node.op_type not in layers or len(node.inputs) < 2 or node.inputs[1] not in consts:
            continue
        found = _single_consumer(nodes, i, uses)
        if found is not None and found[1].op_type == consumer:
            yield node, found[0], found[1]


def _bias_of(node: Node, consts: dict[str, np.ndarray], channels: int) -> np.ndarray:
    """The layer's bias (float64), zeros when it has none."""
    if len(node.inputs) > 2 and node.inputs[2]:
        return consts[node.inputs[2]].astype(np.float64)
    return np.zeros(channels)


def fold_batchnorm(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Conv -> BatchNormalization (inference form) becomes one Conv with scaled weights and a bias."""
    drop: set[int] = set()
    for node, j, bn in _layer_then(nodes, consts, graph_outputs, ("Conv",), "BatchNormalization"):
        if (len(bn.outputs) > 1 and any(bn.outputs[1:])) or not all(name in consts for name in bn.inputs[1:5]):
            continue
        gamma, beta, mean, var = (consts[name].astype(np.float64) for name in bn.inputs[1:5])
        factor = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        weight = consts[node.inputs[1]].astype(np.float64)
        bias = _bias_of(node, consts, weight.shape[0])
        w_name, b_name = f"{node.name}/folded_weight", f"{node.name}/folded_bias"
        consts[w_name] = (weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32)
        consts[b_name] = ((bias - mean) * factor + beta).astype(np.float32)
        node.inputs = [node.inputs[0], w_name, b_name]
        node.outputs = [bn.outputs[0]]
        drop.add(j)
    return [n for k, n in enumerate(nodes) if k not in drop]


def _channel_bias(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """`value` as a per-channel (axis 1) bias of a rank-`rank` tensor, or None when it is not one."""
    v = np.asarray(value)
    if v.ndim > rank:
        return None
    shape = (1,) * (rank - v.ndim) + v.shape
    if rank < 2 or any(d != 1 for k, d in enumerate(shape) if k != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(v.reshape(-1), (channels,)).astype(np.float32)


def fold_bias_add(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Conv/MatMul -> Add(constant per-channel) becomes one op with a bias (MatMul gains a 3rd input)."""
    drop: set[int] = set()
    for node, j, add in _layer_then(nodes, consts, graph_outputs, ("Conv", "MatMul"), "Add"):
        other = add.inputs[1] if add.inputs[0] == node.outputs[0] else add.inputs[0]
        if other not in consts:
            continue
        weight = consts[node.inputs[1]]
        if node.op_type == "Conv":
            channels = weight.shape[0]
            extra = _channel_bias(consts[other], channels, weight.ndim)
        else:
            if weight.ndim != 2:
                continue
            channels = weight.shape[1]
            v = np.asarray(consts[other])
            extra = (
                np.broadcast_to(v.reshape(-1), (channels,)).astype(np.float32)
                if v.size in (1, channels) and (v.ndim <= 1 or all(d == 1 for d in v.shape[:-1]))
                else None
            )
        if extra is None:
            continue
        bias = _bias_of(node, consts, channels)
        b_name = f"{node.name}/bias"
        consts[b_name] = (bias + extra).astype(np.float32)
        node.inputs = [node.inputs[0], node.inputs[1], b_name]
        node.outputs = [add.outputs[0]]
        drop.add(j)
    return [n for k, n in enumerate(nodes) if k not in drop]


def fold_scale_mul(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Conv -> Mul(constant per-channel) becomes one Conv with scaled weights and bias
    (PP-LCNetV3's learnable affine layers export this way)."""
    drop: set[int] = set()
    for node, j, mul in _layer_then(nodes, consts, graph_outputs, ("Conv",), "Mul"):
        other = mul.inputs[1] if mul.inputs[0] == node.outputs[0] else mul.inputs[0]
        if other not in consts:
            continue
        weight = consts[node.inputs[1]].astype(np.float64)
        factor = _channel_bias(consts[other], weight.shape[0], weight.ndim)
        if factor is None:
            continue
        bias = _bias_of(node, consts, weight.shape[0])
        w_name, b_name = f"{node.name}/scaled_weight", f"{node.name}/scaled_bias"
        consts[w_name] = (weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32)
        consts[b_name] = (bias * factor).astype(np.float32)
        node.inputs = [node.inputs[0], w_name, b_name]
        node.outputs = [mul.outputs[0]]
        drop.add(j)
    return [n for k, n in enumerate(nodes) if k not in drop]


def fold_hardsigmoid(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Conv -> HardSigmoid(alpha, beta) (the gate of every squeeze-excitation block in PP-OCR)
    becomes Conv(6 alpha w, 6 alpha b + 6 beta) -> Clip(0, 6) -> Mul(1/6): the Clip fuses into
    the conv as RELU6, so 3 elementwise ops become 1, and the int8 quantizer folds that Mul too."""
    out: list[Node] = []
    replaced: dict[int, list[Node]] = {}
    for node, j, hsig in _layer_then(nodes, consts, graph_outputs, ("Conv",), "HardSigmoid"):
        gain = 6.0 * float(hsig.attrs.get("alpha", 0.2))
        if gain <= 0:
            continue
        weight = consts[node.inputs[1]].astype(np.float64)
        bias = _bias_of(node, consts, weight.shape[0])
        w_name, b_name = f"{node.name}/gate_weight", f"{node.name}/gate_bias"
        consts[w_name] = (weight * gain).astype(np.float32)
        consts[b_name] = (bias * gain + 6.0 * float(hsig.attrs.get("beta", 0.5))).astype(np.float32)
        consts[f"{hsig.name}/sixth"] = np.array(1 / 6, np.float32)
        node.inputs = [node.inputs[0], w_name, b_name]
        relu6 = f"{hsig.name}/relu6"
        replaced[j] = [
            Node("Clip", [node.outputs[0]], [relu6], {"min": 0.0, "max": 6.0}, f"{hsig.name}/clip"),
            Node("Mul", [relu6, f"{hsig.name}/sixth"], list(hsig.outputs), {}, hsig.name),
        ]
    for k, node in enumerate(nodes):
        out += replaced.get(k, [node])
    return out


def _scalar(consts: dict[str, np.ndarray], name: str) -> float | None:
    if name in consts and np.asarray(consts[name]).size == 1:
        return float(np.asarray(consts[name]).reshape(-1)[0])
    return None


def match_hardswish(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """x * Clip(x + 3, 0, 6) / 6 (PaddlePaddle and PyTorch exports) becomes one HardSwish node."""
    uses = _uses(nodes, graph_outputs)
    by_output = {n.outputs[0]: (k, n) for k, n in enumerate(nodes) if n.outputs}
    drop: set[int] = set()
    for k, div in enumerate(nodes):
        if div.op_type not in ("Div", "Mul") or len(div.inputs) != 2:
            continue
        c = _scalar(consts, div.inputs[1])
        if c is None or not np.isclose(c, 6.0 if div.op_type == "Div" else 1 / 6.0):
            continue
        mul_entry = by_output.get(div.inputs[0])
        if mul_entry is None or mul_entry[1].op_type != "Mul" or uses.get(mul_entry[1].outputs[0]) != 1:
            continue
        mk, mul = mul_entry
        for x, clip_name in ((mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])):
            clip_entry = by_output.get(clip_name)
            if clip_entry is None or clip_entry[1].op_type != "Clip" or uses.get(clip_name) != 1:
                continue
            ck, clip = clip_entry
            lo = _scalar(consts, clip.inputs[1]) if len(clip.inputs) > 1 and clip.inputs[1] else clip.attrs.get("min")
            hi = _scalar(consts, clip.inputs[2]) if len(clip.inputs) > 2 and clip.inputs[2] else clip.attrs.get("max")
            add_entry = by_output.get(clip.inputs[0])
            if lo is None or hi is None or not (np.isclose(lo, 0) and np.isclose(hi, 6)) or add_entry is None:
                continue
            ak, add = add_entry
            if add.op_type != "Add" or uses.get(add.outputs[0]) != 1 or x not in add.inputs:
                continue
            other = add.inputs[1] if add.inputs[0] == x else add.inputs[0]
            three = _scalar(consts, other)
            if three is None or not np.isclose(three, 3.0):
                continue
            nodes[k] = Node("HardSwish", [x], [div.outputs[0]], {}, div.name)
            drop.update({mk, ck, ak})
            break
    return [n for k, n in enumerate(nodes) if k not in drop]


def match_rsqrt(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """a / Sqrt(b) (LayerNorm written out) becomes a * Rsqrt(b): TFLite has int8 RSQRT and MUL,
    but no int8 SQRT or DIV."""
    uses = _uses(nodes, graph_outputs)
    by_output = {n.outputs[0]: n for n in nodes if n.outputs}
    for k, node in enumerate(nodes):
        if node.op_type != "Div" or len(node.inputs) != 2 or node.inputs[1] in consts:
            continue
        sqrt = by_output.get(node.inputs[1])
        if sqrt is None or sqrt.op_type != "Sqrt" or uses.get(sqrt.outputs[0]) != 1:
            continue
        sqrt.op_type = "Rsqrt"  # a Tandem-internal op type, lowered to RSQRT
        nodes[k] = Node("Mul", list(node.inputs), list(node.outputs), {}, node.name)
    return nodes


def prepare(model: ModelProto) -> tuple[list[Node], dict[str, np.ndarray]]:
    """All rewrites in order; the result is what ops.py lowers."""
    nodes, consts = from_onnx(model)
    outputs = {o.name for o in model.graph.output}
    nodes = fold_constants(nodes, consts)
    nodes = fold_batchnorm(nodes, consts, outputs)
    nodes = fold_scale_mul(nodes, consts, outputs)
    nodes = fold_bias_add(nodes, consts, outputs)
    nodes = fold_hardsigmoid(nodes, consts, outputs)
    nodes = match_hardswish(nodes, consts, outputs)
    nodes = match_rsqrt(nodes, consts, outputs)
    return nodes, consts
