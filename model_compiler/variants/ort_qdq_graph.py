"""The chains of a QDQ model and how to leave some of them float, by editing the quantized graph.

A QDQ model marks every quantized tensor with a QuantizeLinear -> DequantizeLinear pair; ONNX Runtime
fuses DQ -> op -> Q into the op's integer kernel. The "chains" are the quantized nodes between the
weight ops (Conv/MatMul/Gemm): HardSwish's Add/Mul, scale-and-bias blocks, squeeze-excite gates,
resizes. Leaving a chain float means dropping the Q/DQ pairs that no quantized node needs any more,
which is what ONNX Runtime's quantizer writes for `nodes_to_exclude`, without calibrating again:
the sensitivity search (ort_sensitivity.py) tries dozens of such graphs on one calibration.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    import onnx

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops whose integer kernels carry the speed and whose weights carry the bytes: never left float here
# (the Conv-only recipe quantizes them too), and the borders between chains.
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class ChainGroup:
    """Quantized non-weight nodes joined by tensors (a chain between weight ops), in graph order."""

    index: int
    nodes: tuple[str, ...]
    op_types: tuple[str, ...]

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for op in self.op_types:
            counts[op] = counts.get(op, 0) + 1
        ops = ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"group {self.index} ({ops}; first node {self.nodes[0]})"


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every unnamed main-graph node a stable name (groups and exclusions refer to names)."""
    named = 0
    taken = {n.name for n in model.graph.node if n.name}
    for k, node in enumerate(model.graph.node):
        if not node.name:
            name = f"tandem_node_{k}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
    return named


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def chain_groups(model: onnx.ModelProto) -> list[ChainGroup]:
    """The model's chains: connected components of its quantized non-weight nodes, where a tensor
    passing through a Q/DQ pair still joins its producer and consumer. A node counts as quantized
    when it reads a DequantizeLinear output or feeds a QuantizeLinear (so nodes the recipe already
    kept float, such as an output Sigmoid, join no group unless they sit inside one)."""
    producers = _producers(model)
    consumers = _consumers(model)

    def through_qdq(tensor: str) -> str:
        dq = producers.get(tensor)
        if dq is not None and dq.op_type == "DequantizeLinear":
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                return q.input[0]
        return tensor

    def quantized(node: onnx.NodeProto) -> bool:
        reads = any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input)
        feeds = any(c.op_type == "QuantizeLinear" for o in node.output for c in consumers.get(o, []))
        return reads or feeds

    chain = [n for n in model.graph.node if n.op_type not in QDQ_OPS + WEIGHT_OPS and quantized(n)]
    parent = {n.name: n.name for n in chain}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in chain:
        for tensor in node.input:
            source = producers.get(through_qdq(tensor))
            if source is not None and source.name in parent:
                parent[root(source.name)] = root(node.name)
    members: dict[str, list[onnx.NodeProto]] = {}
    for node in chain:  # graph order, so groups come out ordered by their first node
        members.setdefault(root(node.name), []).append(node)
    return [
        ChainGroup(k, tuple(n.name for n in nodes), tuple(n.op_type for n in nodes))
        for k, nodes in enumerate(members.values())
    ]


# Activations ONNX Runtime's quantizer deletes when a Q follows them (uint8 activations): the Q's
# range clips instead. Removing that Q must put the activation back.
REMOVABLE_ACTIVATIONS = ("Relu", "Clip")


@dataclass(frozen=True)
class FoldedActivation:
    """A Relu/Clip of the float model that the quantizer folded into the Q of its output tensor."""

    node: onnx.NodeProto
    constants: tuple[onnx.TensorProto, ...]  # Clip's min/max, as initializers


@dataclass(frozen=True)
class FloatSource:
    """What the float model the quantizer read can give back: folded Relu/Clips per tensor, and
    float constants by name (a node left float reads its constants unquantized)."""

    activations: Mapping[str, FoldedActivation]
    constants: Mapping[str, onnx.TensorProto]


def float_source(qdq: onnx.ModelProto, float_model: onnx.ModelProto) -> FloatSource:
    """The FloatSource of `qdq`, from the float graph the quantizer read."""
    from onnx import numpy_helper

    constants = {init.name: init for init in float_model.graph.initializer}
    for node in float_model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    constants[node.output[0]] = numpy_helper.from_array(numpy_helper.to_array(a.t), node.output[0])
    return FloatSource(folded_activations(qdq, float_model), constants)


def folded_activations(qdq: onnx.ModelProto, float_model: onnx.ModelProto) -> dict[str, FoldedActivation]:
    """Per tensor of `qdq`: the float model's Relu/Clip that produced it and that `qdq` no longer has
    (the quantizer renamed the activation's input producer's output to the activation's output)."""
    from onnx import numpy_helper

    kept = {n.name for n in qdq.graph.node}
    inits = {init.name: init for init in float_model.graph.initializer}
    constants = {
        n.output[0]: numpy_helper.from_array(numpy_helper.to_array(a.t), n.output[0])
        for n in float_model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }
    found = {}
    for node in float_model.graph.node:
        if node.op_type in REMOVABLE_ACTIVATIONS and node.name not in kept:
            values = tuple(inits.get(i) or constants[i] for i in node.input[1:] if i)
            found[node.output[0]] = FoldedActivation(node, values)
    return found


def qdq_pairs(model: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """Activation tensors that pass through a QuantizeLinear whose only readers are
    DequantizeLinears: tensor -> (Q, DQs). Weights (initializers) and graph outputs are not listed."""
    consumers = _consumers(model)
    initializers = {init.name for init in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    found = {}
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in initializers or q.output[0] in outputs:
            continue
        users = consumers.get(q.output[0], [])
        if users and all(u.op_type == "DequantizeLinear" and u.output[0] not in outputs for u in users):
            found[q.input[0]] = (q, users)
    return found


def freed_tensors(model: onnx.ModelProto, float_nodes: Iterable[str]) -> list[str]:
    """The Q/DQ pairs no quantized node needs once `float_nodes` run in float: the tensor's producer
    and every reader of its DQs are float (or absent). Pairs a quantized neighbour needs stay, so
    weight ops keep their integer kernels (what ONNX Runtime's nodes_to_exclude writes)."""
    floated = set(float_nodes)
    producers = _producers(model)
    consumers = _consumers(model)

    def quantized(node: onnx.NodeProto | None) -> bool:
        return node is not None and node.op_type not in QDQ_OPS and node.name not in floated

    freed = []
    for tensor, (_, dqs) in qdq_pairs(model).items():
        readers = [r for dq in dqs for r in consumers.get(dq.output[0], [])]
        if not quantized(producers.get(tensor)) and not any(quantized(r) for r in readers):
            freed.append(tensor)
    return freed


def unquantize(
    model: onnx.ModelProto,
    tensors: Iterable[str],
    source: FloatSource | None = None,
) -> onnx.ModelProto:
    """A copy of the QDQ `model` without the Q/DQ pairs on `tensors` (names from qdq_pairs): their
    readers take the float tensor, and the ops around it no longer fuse into integer kernels. With
    the float model's `source` (float_source), a Relu/Clip the quantizer had folded into that Q
    comes back, and the ops that now run in float read their constants unquantized."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    pairs = qdq_pairs(out)
    wanted = set(tensors)
    unknown = sorted(wanted - set(pairs))
    if unknown:
        raise ValueError(f"no activation Q/DQ pair on {', '.join(unknown[:5])}")
    drop: set[int] = set()
    rename: dict[str, str] = {}
    for tensor in wanted:
        q, dqs = pairs[tensor]
        drop.add(id(q))
        drop.update(id(dq) for dq in dqs)
        rename.update({dq.output[0]: tensor for dq in dqs})
    producers = _producers(out)
    kept = [n for n in graph.node if id(n) not in drop]
    gone = set(rename) | {o for n in graph.node if id(n) in drop for o in n.output}
    for node in kept:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    restored = _restore_activations(out, kept, wanted, source.activations if source else {}, producers)
    if source is not None:
        _float_constants(out, restored, wanted, source.constants)
        read = {name for n in restored for name in n.input} | {o.name for o in graph.output}
        restored = [n for n in restored if n.op_type != "DequantizeLinear" or n.output[0] in read]
    del graph.node[:]
    graph.node.extend(restored)
    from tandem.model_compiler.model_io import drop_unused_initializers

    drop_unused_initializers(graph, gone)
    return out


def leave_float(
    model: onnx.ModelProto,
    float_nodes: Iterable[str],
    source: FloatSource | None = None,
) -> tuple[onnx.ModelProto, int]:
    """A copy of the QDQ `model` in which the named nodes run in float (unquantize of their
    freed_tensors); returns it and how many Q/DQ pairs were removed."""
    freed = freed_tensors(model, float_nodes)
    return unquantize(model, freed, source), len(freed)


def _restore_activations(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    unquantized: set[str],
    activations: Mapping[str, FoldedActivation],
    producers: Mapping[str, onnx.NodeProto],
) -> list[onnx.NodeProto]:
    """`nodes` with each folded activation on a tensor that lost its Q put back after its producer:
    producer -> `<tensor>_before_<op>` -> Relu/Clip -> tensor."""
    import onnx

    have = {init.name for init in model.graph.initializer}
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for tensor in unquantized:
        folded = activations.get(tensor)
        source = producers.get(tensor)
        if folded is None or source is None:
            continue
        raw = f"{tensor}_before_{folded.node.op_type.lower()}"
        source.output[list(source.output).index(tensor)] = raw
        node = onnx.NodeProto()
        node.CopyFrom(folded.node)
        node.input[0] = raw
        after[id(source)].append(node)
        for value in folded.constants:
            if value.name not in have:
                model.graph.initializer.append(value)
                have.add(value.name)
    out = []
    for node in nodes:
        out.append(node)
        out.extend(after.get(id(node), []))
    return out


def _float_constants(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    unquantized: set[str],
    constants: Mapping[str, onnx.TensorProto],
) -> None:
    """Nodes next to an unquantized tensor that can no longer fuse (an input not from a DQ, or an
    output not into a Q) read their DQ'd constants as the float originals (the quantizer names a
    quantized initializer `<name>_quantized`)."""
    producers = {out: n for n in nodes for out in n.output}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        for name in n.input:
            readers[name].append(n)
    inits = {init.name for init in model.graph.initializer}
    touched = {id(n): n for t in unquantized for n in readers.get(t, []) + [producers.get(t)] if n is not None}
    for node in touched.values():
        if node.op_type in QDQ_OPS + WEIGHT_OPS:
            continue
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            original = dq.input[0].removesuffix("_quantized")
            value = constants.get(original)
            if value is None:
                continue
            if original not in inits:
                model.graph.initializer.append(value)
                inits.add(original)
            node.input[k] = original
