"""Lower a prepared ONNX node list to the TFLite-shaped IR, choosing layouts as it goes.

ONNX image tensors are NCHW; TFLite convolutions and pools want NHWC. Each ONNX value
may exist in the IR in either layout ("plain" = the ONNX axis order, "nhwc" = a 4-D
NCHW value stored NHWC); a transpose is inserted only when a consumer needs the other
layout, and cached. Graph inputs and outputs keep the ONNX layout and dtype, so a
caller feeds the LiteRT model the arrays it would feed ONNX Runtime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from tandem.model_compiler.litert.errors import LoweringError, unsupported
from tandem.model_compiler.litert.ir import Graph, Tensor
from tandem.model_compiler.litert.prepass import Node, prepare

if TYPE_CHECKING:
    from onnx import ModelProto

logger = logging.getLogger(__name__)

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def nhwc_shape(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[i] for i in TO_NHWC)


@dataclass
class Value:
    """One ONNX value: its logical (ONNX) shape and the IR tensors that hold it, per layout."""

    shape: tuple[int, ...]
    const: np.ndarray | None = None
    tensors: dict[str, int] = field(default_factory=dict)


class Lowering:
    """State of one lowering: the IR being built and where each ONNX value lives."""

    def __init__(self, consts: Mapping[str, np.ndarray], for_int8: bool = False) -> None:
        self.for_int8 = for_int8  # prefer ops whose int8 kernels CPU delegates (XNNPACK) take
        self.graph = Graph()
        self.values: dict[str, Value] = {name: Value(tuple(np.shape(v)), np.asarray(v)) for name, v in consts.items()}
        self.node: Node | None = None

    # -- reading values ---------------------------------------------------------------
    def value(self, name: str) -> Value:
        if name not in self.values:
            raise LoweringError(
                f"value {name!r} is used before it is produced (the graph is not topologically sorted?)"
            )
        return self.values[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.value(name).shape

    def const(self, name: str) -> np.ndarray | None:
        return self.values[name].const if name in self.values else None

    def native_layout(self, name: str) -> str:
        tensors = self.value(name).tensors
        return "nhwc" if "nhwc" in tensors else "plain"

    def tensor(self, name: str, layout: str = "plain") -> int:
        """The IR tensor of `name` in `layout`, adding a cached transpose (or constant) when needed."""
        value = self.value(name)
        if layout in value.tensors:
            return value.tensors[layout]
        if layout == "nhwc" and len(value.shape) != 4:
            raise LoweringError(f"{self._where()}: {name!r} has shape {list(value.shape)}, expected a 4-D NCHW tensor")
        if value.const is not None:
            data = value.const.transpose(TO_NHWC) if layout == "nhwc" else value.const
            index = self.graph.const(f"{name}/{layout}" if layout != "plain" else name, data)
        else:
            src_layout = "nhwc" if layout == "plain" else "plain"
            src = value.tensors[src_layout]
            perm = TO_NCHW if layout == "plain" else TO_NHWC
            shape = tuple(value.shape) if layout == "plain" else nhwc_shape(value.shape)
            index = self.graph.add_tensor(Tensor(f"{name}/{layout}", shape))
            perm_index = self.graph.const(f"{name}/{layout}/perm", np.array(perm, dtype=np.int32))
            self.graph.add_op("TRANSPOSE", [src, perm_index], [index], self._where())
        value.tensors[layout] = index
        return index

    def operand(self, name: str, layout: str, rank: int) -> int:
        """`name` for an elementwise op on a rank-`rank` tensor in `layout`; constants broadcast to match."""
        value = self.value(name)
        if value.const is None:
            return self.tensor(name, layout)
        data = value.const.astype(np.float32) if value.const.dtype == np.float64 else value.const
        if data.size == 1:
            return self.graph.const(f"{name}/scalar", data.reshape(()))
        if layout == "nhwc":
            data = data.reshape((1,) * (4 - data.ndim) + data.shape).transpose(TO_NHWC)
        return self.graph.const(f"{name}/{layout}", data)

    # -- defining values --------------------------------------------------------------
    def define(self, name: str, shape: Sequence[int], layout: str = "plain", dtype: str = "float32") -> int:
        """A new IR tensor for ONNX value `name` (logical `shape`) stored in `layout`."""
        shape = tuple(int(d) for d in shape)
        physical = nhwc_shape(shape) if layout == "nhwc" else shape
        index = self.graph.add_tensor(Tensor(name, physical, dtype))
        self.values[name] = Value(shape, None, {layout: index})
        return index

    def temp(self, name: str, physical_shape: Sequence[int], dtype: str = "float32") -> int:
        return self.graph.add_tensor(Tensor(name, tuple(int(d) for d in physical_shape), dtype))

    def set_const(self, name: str, data: np.ndarray) -> None:
        self.values[name] = Value(tuple(np.shape(data)), np.asarray(data))

    def alias(self, name: str, source: str) -> None:
        self.values[name] = self.value(source)

    def emit(self, kind: str, inputs: list[int], outputs: list[int], **options: Any) -> None:
        self.graph.add_op(kind, inputs, outputs, self._where(), **options)

    def _where(self) -> str:
        return f"{self.node.op_type} node {self.node.name!r}" if self.node else "graph"


def static_input_shapes(
    model: ModelProto, overrides: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Each graph input's shape with dynamic dims resolved: `overrides` first, else batch 1."""
    overrides = dict(overrides or {})
    initializers = {i.name for i in model.graph.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        if vi.name in overrides:
            shapes[vi.name] = tuple(int(d) for d in overrides[vi.name])
            continue
        dims = []
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif k == 0:
                dims.append(1)
            else:
                raise LoweringError(
                    f"input {vi.name!r} has a dynamic dimension {k} ({d.dim_param or '?'}); LiteRT needs static shapes: "
                    "pass input_shapes (the compiler takes them from the calibration data)"
                )
        shapes[vi.name] = tuple(dims)
    return shapes


_FUSABLE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL"}  # CONCATENATION ignores it
_ACTIVATIONS = {"RELU": "RELU", "RELU6": "RELU6", "RELU_N1_TO_1": "RELU_N1_TO_1"}


def fuse_activations(graph: Graph) -> Graph:
    """Fold a RELU/RELU6 into the op before when that op's output feeds nothing else."""
    outputs = set(graph.outputs)
    consumers: dict[int, int] = {}
    for op in graph.ops:
        for i in op.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    producer = {out: op for op in graph.ops for out in op.outputs}
    kept = []
    for op in graph.ops:
        if op.kind in _ACTIVATIONS:
            src = op.inputs[0]
            prev = producer.get(src)
            if (
                prev is not None
                and prev.kind in _FUSABLE
                and prev.options.get("activation", "NONE") == "NONE"
                and consumers.get(src) == 1
                and src not in outputs
            ):
                prev.options["activation"] = _ACTIVATIONS[op.kind]
                prev.outputs = list(op.outputs)
                producer[op.outputs[0]] = prev
                continue
        kept.append(op)
    graph.ops = kept
    return prune(graph)


def prune(graph: Graph) -> Graph:
    """Drop ops whose outputs nobody reads, then tensors nobody references (indices renumbered)."""
    needed = set(graph.outputs)
    kept = []
    for op in reversed(graph.ops):
        if any(o in needed for o in op.outputs):
            kept.append(op)
            needed.update(i for i in op.inputs if i >= 0)
    kept.reverse()
    used = sorted(needed | set(graph.inputs))
    remap = {old: new for new, old in enumerate(used)}
    graph.tensors = [graph.tensors[i] for i in used]
    for op in kept:
        op.inputs = [remap[i] if i >= 0 else -1 for i in op.inputs]
        op.outputs = [remap[o] for o in op.outputs]
        if "clamp_output" in op.options:  # a tensor index kept in options (see ops.clip)
            op.options["clamp_output"] = remap[op.options["clamp_output"]]
    graph.ops = kept
    graph.inputs = [remap[i] for i in graph.inputs]
    graph.outputs = [remap[o] for o in graph.outputs]
    return graph


def share_constants(graph: Graph) -> Graph:
    """One tensor for each set of equal constants (type, shape, values and quantization), then
    pruned: HardSwish's 3 and 1/6 and other scalars otherwise come once per use, each with its own
    tensor, buffer and parameters in the file. Run it on a finished graph: the int8 quantizer
    rewrites constants per op, so it must not see them shared."""
    seen: dict[tuple, int] = {}
    remap: dict[int, int] = {}
    for i, t in enumerate(graph.tensors):
        if t.data is None or i in graph.outputs:
            continue
        q = t.quant
        params = None if q is None else (q.scale.tobytes(), q.zero_point.tobytes(), q.axis)
        remap[i] = seen.setdefault((t.dtype, t.shape, t.data.tobytes(), params), i)
    for op in graph.ops:
        op.inputs = [remap.get(i, i) for i in op.inputs]
    return prune(graph)


@dataclass
class Lowered:
    """The float IR plus what a caller must know about its I/O."""

    graph: Graph
    input_names: list[str]
    output_names: list[str]
    input_shapes: dict[str, tuple[int, ...]]
    notes: list[str] = field(default_factory=list)


def lower(
    model: ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None, for_int8: bool = False
) -> Lowered:
    """ONNX ModelProto -> float32 IR at static shapes. Raises UnsupportedOpError naming the node.

    for_int8 lowers for later quantization: HardSwish becomes ADD/MUL, because XNNPACK
    does not take int8 HARD_SWISH and each one would split the delegated graph.
    """
    from tandem.model_compiler.litert.ops import LOWERINGS

    shapes = static_input_shapes(model, input_shapes)
    nodes, consts = prepare(model)
    low = Lowering(consts, for_int8)
    for name, shape in shapes.items():
        vi = next(v for v in model.graph.input if v.name == name)
        if vi.type.tensor_type.elem_type != 1:
            raise LoweringError(f"input {name!r} is not float32; the LiteRT lowering takes float32 inputs only")
        low.graph.inputs.append(low.define(name, shape))
    for node in nodes:
        low.node = node
        if node.domain not in ("", "ai.onnx"):
            raise unsupported(node.op_type, node.name, f"operator from domain {node.domain!r} has no TFLite lowering")
        rule = LOWERINGS.get(node.op_type)
        if rule is None:
            raise unsupported(
                node.op_type, node.name, f"no TFLite lowering (supported: {', '.join(sorted(LOWERINGS))})"
            )
        rule(low, node)
    low.node = None
    output_names = [o.name for o in model.graph.output]
    for name in output_names:
        if low.value(name).const is not None:
            raise LoweringError(f"output {name!r} is a constant; nothing to run")
        low.graph.outputs.append(low.tensor(name, "plain"))
    for name, index in zip(output_names, low.graph.outputs):
        low.graph.tensors[index].name = name
    graph = fuse_activations(low.graph)
    return Lowered(graph, list(shapes), output_names, shapes)
