"""Bound inputs (`tandem-compile --bind NAME=VALUE`): specialize an ONNX model to fixed values of its
scalar inputs. Each bound input becomes a constant, every node it alone decides is folded, and every
`If` whose condition becomes constant is replaced by the branch it would take (repeatedly, so nested
ones go too). Silero VAD keeps its whole network inside `If(sr == 16000)`: bound to 16000, its weights
reach the main graph, where quantizers and converters (OpenVINO) can work on them.

`fix_shapes` does the same for static input shapes (`Shape`/`Size` of a tensor whose shape is then
known become constants), for OpenVINO's static buckets: Silero's LSTM sits in `If`s on its input's
shape, which NNCF cannot quantize.

A ModelProto in, a new ModelProto out. Folding uses ONNX's reference evaluator, so any standard op
it knows may compute a condition; `fix_shapes` also runs the model once with ONNX Runtime to learn
intermediate shapes that ONNX's shape inference loses.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from tandem.model_compiler.errors import InvalidModelError
from tandem.model_compiler.model_io import drop_unused_initializers, graphs_within
from tandem.protocols.manifest import DTYPES, BoundInput

if TYPE_CHECKING:
    import onnx

# Ops whose result is not a function of their inputs: never folded.
_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


@dataclass
class Specialized:
    """The specialized model, the inputs it no longer takes, and one note per change."""

    model: onnx.ModelProto
    bound: list[BoundInput]
    notes: list[str] = field(default_factory=list)
    inlined: int = 0  # `If` nodes replaced by a branch
    folded: int = 0  # nodes replaced by their constant result


def parse_value(text: str, dtype: str, name: str) -> int | float | bool:
    """`text` as a scalar of numpy dtype `dtype`, refusing what the dtype cannot hold exactly."""
    kind = np.dtype(dtype).kind
    try:
        if kind == "b":
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true or false")
            return text.lower() in ("true", "1")
        if kind in "iu":
            value = int(text)
            info = np.iinfo(np.dtype(dtype))
            if not info.min <= value <= info.max:
                raise ValueError(f"out of range for {dtype}")
            return value
        number = float(text)
        if not np.isfinite(number):
            raise ValueError("not a finite number")
        return number
    except ValueError as exc:
        raise InvalidModelError(f"--bind {name}={text}: not a {dtype} value ({exc})") from None


def bind_inputs(model: onnx.ModelProto, values: Mapping[str, str]) -> Specialized:
    """`model` with each input in `values` (NAME -> its text) made a constant, then folded and inlined.

    InvalidModelError names an input that is not a 0-d graph input, or a value its dtype cannot hold.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initialized = {i.name for i in graph.initializer}
    inputs = {vi.name: vi for vi in graph.input if vi.name not in initialized}
    known: dict[str, np.ndarray] = {}
    bound: list[BoundInput] = []
    notes: list[str] = []
    for name, text in values.items():
        vi = inputs.get(name)
        tensor_type = vi.type.tensor_type if vi is not None else None
        if tensor_type is None or not tensor_type.HasField("shape") or len(tensor_type.shape.dim) != 0:
            scalars = [
                n
                for n, v in inputs.items()
                if v.type.tensor_type.HasField("shape") and not v.type.tensor_type.shape.dim
            ]
            raise InvalidModelError(
                f"--bind {name}: the model has no 0-d (scalar) input of that name "
                f"(its scalar inputs: {', '.join(scalars) or 'none'})"
            )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        if dtype.name not in DTYPES or dtype.kind not in "biuf":
            raise InvalidModelError(
                f"--bind {name}: input of type {dtype.name} cannot be bound (numbers and bools only)"
            )
        value = parse_value(str(text), dtype.name, name)
        array = np.asarray(value, dtype=dtype).reshape(())
        graph.input.remove(vi)
        graph.initializer.append(numpy_helper.from_array(array, name))
        known[name] = array
        value = array.item()  # as the dtype holds it (0.1 in float32 is 0.10000000149...), what requests compare to
        bound.append(BoundInput(name=name, dtype=dtype.name, value=value))
        notes.append(f"input {name!r} bound to {value!r} ({dtype.name}): the variants no longer take it")
    result = Specialized(model, bound, notes)
    _propagate(result, known)
    _drop_dead_nodes(graph)
    drop_unused_initializers(graph)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and friends
        raise InvalidModelError(f"--bind: the specialized model is not valid ONNX ({exc})") from exc
    if result.inlined or result.folded:
        notes.append(f"specialized: {result.inlined} If node(s) inlined, {result.folded} node(s) folded to constants")
    return result


def fix_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> Specialized:
    """`model` at static input `shapes` (by input name), with what they decide folded: `Shape` and
    `Size` of a tensor whose inferred shape is static become constants, then folds and `If`
    inlining as for bound inputs. OpenVINO's static buckets use it for models that still hold
    shape-dependent `If`s (Silero VAD's LSTM branches): NNCF compiles `If` bodies on their own,
    and OpenVINO's CPU plugin refuses an `If` of dynamic rank.
    """
    import onnx
    from onnx import shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(shapes[vi.name]):
            raise InvalidModelError(f"input {vi.name!r}: rank {len(dims)}, shape {list(shapes[vi.name])} given")
        for dim, size in zip(dims, shapes[vi.name]):
            dim.Clear()
            dim.dim_value = int(size)
    result = Specialized(model, [])
    for _ in range(4):  # each round's inlined nodes get their shapes known in the next
        before = (result.inlined, result.folded)
        try:
            inferred = shape_inference.infer_shapes(result.model)
        except Exception:  # onnx raises its own InferenceError and friends: fold only what is known
            inferred = result.model
        static = {**_observed_shapes(result.model, shapes), **_static_shapes(inferred.graph)}
        _propagate(result, {}, static)
        if (result.inlined, result.folded) == before:
            break
    _drop_dead_nodes(result.model.graph)
    drop_unused_initializers(result.model.graph)
    result.notes = (  # one line: a variant's notes name the count, not every If
        [f"specialized to its static input shapes: {result.inlined} If node(s) inlined, {result.folded} folded"]
        if result.inlined or result.folded
        else []
    )
    return result


# Ops whose output shape follows their input values, and whatever a subgraph decides at run time.
_DATA_SHAPED = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "Loop", "Scan"}


def _observed_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Every top-level value's shape as ONNX Runtime computes it at the static input `shapes`, kept
    only where two runs (zeros, then random values) agree and nothing upstream is data-shaped.
    ONNX's own shape inference loses static dims through Silero's STFT front end; the runtime does not.
    A graph ONNX Runtime cannot run here gives nothing (the variant's gate judges what is built)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = model.graph
    tainted: set[str] = set()
    for node in graph.node:
        if node.op_type in _DATA_SHAPED or any(i in tainted for i in node.input):
            tainted.update(node.output)
    names = [o for n in graph.node for o in n.output if o and o not in tainted]
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    known_outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.ValueInfoProto(name=n) for n in names if n not in known_outputs)
    initialized = {i.name for i in graph.initializer}
    rng = np.random.default_rng(0)
    feeds: list[dict[str, np.ndarray]] = [{}, {}]
    for vi in graph.input:
        if vi.name in initialized:
            continue
        if vi.name not in shapes:
            return {}
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
        feeds[0][vi.name] = np.zeros(shapes[vi.name], dtype)
        feeds[1][vi.name] = rng.normal(size=shapes[vi.name]).astype(dtype)
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3  # not a warning per initializer a fold left unread
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        runs = [session.run(names, f) for f in feeds]
    except Exception:  # ORT raises its own Fail/InvalidArgument types
        return {}
    return {n: tuple(a.shape) for n, a, b in zip(names, runs[0], runs[1]) if np.shape(a) == np.shape(b)}


def _static_shapes(graph: Any) -> dict[str, tuple[int, ...]]:
    """Value name -> its shape, for every value whose inferred shape is fully static."""
    found: dict[str, tuple[int, ...]] = {i.name: tuple(i.dims) for i in graph.initializer}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            found[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    return found


def _propagate(
    result: Specialized, known: dict[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> None:
    """Walk the nodes in order: fold those the bound values (or static `shapes`) decide, inline `If`s they decide."""
    from onnx import helper, numpy_helper

    graph = result.model.graph
    opset = next((o.version for o in result.model.opset_import if o.domain in ("", "ai.onnx")), 17)
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                constants[node.output[0]] = attr.t
    graph_outputs = {o.name for o in graph.output}
    taken = _names(graph)
    queue = deque(graph.node)
    kept: list[Any] = []
    while queue:
        node = queue.popleft()
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):  # an inlined branch's too
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                constants[node.output[0]] = attr.t
        if _shape_known(node, shapes, graph_outputs):
            assert shapes is not None
            dims = np.array(shapes[node.input[0]], np.int64)
            if node.op_type == "Size":
                value = np.array(np.prod(dims), np.int64)
            else:
                start = next((a.i for a in node.attribute if a.name == "start"), 0)
                end = next((a.i for a in node.attribute if a.name == "end"), None)
                value = dims[start:end]
            known[node.output[0]] = value
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
            result.folded += 1
            continue
        if node.op_type == "If" and node.domain in ("", "ai.onnx") and node.input[0] in known:
            branch_name = "then_branch" if bool(known[node.input[0]].reshape(-1)[0]) else "else_branch"
            branch = next(a.g for a in node.attribute if a.name == branch_name)
            clash = _names(branch, include_inputs=False) & taken
            if clash:
                kept.append(node)
                result.notes.append(
                    f"If {node.name or node.output[0]!r} kept: its {branch_name} reuses outer names "
                    f"({', '.join(sorted(clash)[:3])})"
                )
                continue
            taken |= _names(branch, include_inputs=False)
            graph.initializer.extend(branch.initializer)
            constants.update({i.name: i for i in branch.initializer})
            tail = [helper.make_node("Identity", [b.name], [o]) for b, o in zip(branch.output, node.output)]
            queue.extendleft(reversed(list(branch.node) + tail))  # their own Ifs and folds are looked at next
            result.inlined += 1
            result.notes.append(
                f"If {node.name or node.output[0]!r} inlined: its condition is constant ({branch_name})"
            )
            continue
        if _foldable(node, known, constants, graph_outputs):
            feeds = {}
            for name in node.input:
                if name and name not in known:
                    known[name] = numpy_helper.to_array(constants[name])
                if name:
                    feeds[name] = known[name]
            for out, value in zip(node.output, _evaluate(node, feeds, opset)):
                known[out] = value
                graph.initializer.append(numpy_helper.from_array(value, out))
            result.folded += 1
            continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _shape_known(node: Any, shapes: Mapping[str, tuple[int, ...]] | None, graph_outputs: set[str]) -> bool:
    return (
        shapes is not None
        and node.op_type in ("Shape", "Size")
        and node.domain in ("", "ai.onnx")
        and node.input[0] in shapes
        and node.output[0] not in graph_outputs
    )


def _foldable(node: Any, known: dict[str, np.ndarray], constants: Mapping[str, Any], graph_outputs: set[str]) -> bool:
    """A node the bound values decide: every input constant, at least one derived from a bound input."""
    inputs = [i for i in node.input if i]
    return (
        node.domain in ("", "ai.onnx")
        and node.op_type not in _NONDETERMINISTIC
        and not any(a.type in (5, 10) for a in node.attribute)  # GRAPH / GRAPHS: a subgraph decides at run time
        and bool(inputs)
        and any(i in known for i in inputs)
        and all(i in known or i in constants for i in inputs)
        and not any(o in graph_outputs for o in node.output)
    )


def _evaluate(node: Any, feeds: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph(
        [node],
        "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in feeds.items()],
        [helper.make_tensor_value_info(o, 0, None) for o in node.output if o],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    outputs: Any = ReferenceEvaluator(model).run(None, feeds)
    return [np.asarray(o) for o in outputs]


def _names(graph: Any, include_inputs: bool = True) -> set[str]:
    """Every value name a graph defines (node outputs, initializers, and its inputs unless excluded)."""
    names = {o for n in graph.node for o in n.output if o} | {i.name for i in graph.initializer}
    if include_inputs:
        names |= {i.name for i in graph.input}
    return names


def _drop_dead_nodes(graph: Any) -> None:
    """Nodes whose outputs nothing reads any more (the Constants a fold consumed), last to first."""
    used = {o.name for o in graph.output}
    keep: list[Any] = []
    for node in reversed(graph.node):
        if node.op_type in _NONDETERMINISTIC or any(o in used for o in node.output):
            keep.append(node)
            used.update(i for i in node.input if i)
            used.update(_outer_reads(node))
    del graph.node[:]
    graph.node.extend(reversed(keep))


def _outer_reads(node: Any) -> set[str]:
    """Names a node's subgraphs read (their own or outer-scope values, all counted as read)."""
    reads: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            for g in graphs_within(sub):
                reads.update(i for inner in g.node for i in inner.input if i)
                reads.update(o.name for o in g.output)
    return reads
