"""Load, check and prepare the source ONNX model; describe its inputs and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterable, Iterator

import numpy as np

from tandem.model_compiler.errors import InvalidModelError, UnsupportedDtypeError
from tandem.model_compiler.ml_types import type_ml_outputs
from tandem.protocols.manifest import TensorSpec

if TYPE_CHECKING:
    import onnx

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis attribute) needs opset 13

# ONNX TensorProto element types -> the manifest's numpy names: every fixed-size dtype the agent's local API
# carries and ONNX Runtime (the compiler's reference) feeds from numpy.
_ONNX_DTYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}
# Types the manifest knows but no variant can be built for, and why.
_REFUSED_DTYPES = {
    8: "a string tensor: the agent's local API carries fixed-size dtypes only",
    16: "bfloat16: ONNX Runtime's Python API (the compiler's reference) can neither feed nor return it",
}


def load_model(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX model; errors name the file and what is wrong."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such model file")
    if is_tflite(path):
        onnx_path = path.with_suffix(".onnx")
        raise InvalidModelError(
            f"{path}: a TFLite model; tandem-compile starts from ONNX (every runtime's variant, LiteRT's "
            f"included, is built and validated from it). Convert it first, then compile {onnx_path.name}:\n"
            f"  pip install tf2onnx tensorflow\n"
            f"  python -m tf2onnx.convert --tflite {path} --output {onnx_path} --opset 17"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, OSError
        raise InvalidModelError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    _load_external_data(model, path)
    _check_opset_known(model, path)
    if not model.graph.node:
        raise InvalidModelError(f"{path}: the graph has no nodes")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InvalidModelError(f"{path}: the ONNX checker rejects it: {str(exc).splitlines()[0]}") from exc
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the weights an exporter saved beside the model (save_as_external_data) into it, so every
    variant is self-contained; a missing or unreadable data file is named, with the tensors that need it."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, load_external_data_for_model

    wanted: dict[str, list[str]] = {}
    for tensor in _get_all_tensors(model):
        if tensor.data_location == tensor.EXTERNAL:
            wanted.setdefault(ExternalDataInfo(tensor).location, []).append(tensor.name)
    if not wanted:
        return
    for location, tensors in wanted.items():
        if not (path.parent / location).is_file():
            named = ", ".join(repr(t) for t in tensors[:3]) + (
                f" and {len(tensors) - 3} more" if len(tensors) > 3 else ""
            )
            raise InvalidModelError(
                f"{path}: its weights are stored outside it, in {location!r} (tensors {named}), and "
                f"{path.parent / location} is not a file: copy the data file the exporter wrote beside the model, "
                "under that name"
            )
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as exc:  # a location escaping the folder, a truncated file
        raise InvalidModelError(f"{path}: cannot read its external weights ({type(exc).__name__}: {exc})") from exc


def _check_opset_known(model: onnx.ModelProto, path: Path) -> None:
    """An opset newer than the installed onnx knows passes its checker but no runtime here loads it (ONNX
    Runtime: 'Opset 30 is under development'): say so before anything is built."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > newest:
            raise InvalidModelError(
                f"{path}: imports ONNX opset {imp.version}, newer than the highest this installation knows "
                f"({newest}, onnx {onnx.__version__}); re-export it at opset {newest} or lower, or upgrade onnx "
                "and onnxruntime"
            )


def is_tflite(path: Path) -> bool:
    """A TFLite flatbuffer: the 'TFL3' file identifier at bytes 4-8 (whatever the suffix)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head[4:8] == b"TFL3" or path.suffix.lower() == ".tflite"


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise InvalidModelError("the model imports no default ONNX opset")


def _import_default_opset(model: onnx.ModelProto) -> str:
    """A model of ai.onnx.ml operators only (onnxruntime's logreg_iris.onnx) may import no default opset;
    with no ONNX-domain node, importing one changes nothing it computes, and variants need it (QDQ)."""
    if any(n.domain in ("", "ai.onnx") for g in graphs_within(model.graph) for n in g.node):
        raise InvalidModelError(
            "the model has ONNX-domain nodes but imports no default ONNX opset; re-export it with one (opset >= 13)"
        )
    domains = ", ".join(sorted({imp.domain for imp in model.opset_import})) or "none"
    model.opset_import.add(domain="", version=MIN_OPSET)
    model.ir_version = max(model.ir_version, 7)  # opset 13 needs IR version 7
    return (
        f"the model imports only {domains} (no default ONNX opset); default opset {MIN_OPSET} imported, which "
        "changes nothing it computes (it has no ONNX-domain node)"
    )


def prepare_model(model: onnx.ModelProto, out_path: Path) -> tuple[onnx.ModelProto, list[str]]:
    """Raise the opset to at least MIN_OPSET and infer shapes; save to out_path.

    Quantized (QDQ) variants of an opset-11 model fail to load otherwise: per-channel
    DequantizeLinear takes an axis only from opset 13.
    """
    import onnx
    from onnx import shape_inference, version_converter

    notes: list[str] = []
    if not any(imp.domain in ("", "ai.onnx") for imp in model.opset_import):
        notes.append(_import_default_opset(model))
    opset = default_opset(model)
    if opset < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise InvalidModelError(f"cannot raise the model's opset {opset} to {MIN_OPSET}: {exc}") from exc
        notes.append(f"opset raised from {opset} to {MIN_OPSET} (per-channel QDQ needs opset 13)")
    type_ml_outputs(model)  # most ai.onnx.ml outputs get no type from shape inference (ml_types.py)
    try:
        model = shape_inference.infer_shapes(model)
    except Exception as exc:
        notes.append(f"shape inference incomplete: {exc}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return model, notes


def type_name(tp: onnx.TypeProto) -> str:
    """An ONNX type as ONNX's own spec writes it: `tensor(float)`, `seq(map(int64, tensor(float)))`."""
    from onnx import TensorProto

    def elem(code: int) -> str:
        return TensorProto.DataType.Name(code).lower() if code in TensorProto.DataType.values() else f"type {code}"

    which = tp.WhichOneof("value")
    if which == "tensor_type":
        return f"tensor({elem(tp.tensor_type.elem_type)})"
    if which == "sparse_tensor_type":
        return f"sparse_tensor({elem(tp.sparse_tensor_type.elem_type)})"
    if which == "sequence_type":
        return f"seq({type_name(tp.sequence_type.elem_type)})"
    if which == "map_type":
        return f"map({elem(tp.map_type.key_type)}, {type_name(tp.map_type.value_type)})"
    if which == "optional_type":
        return f"optional({type_name(tp.optional_type.elem_type)})"
    return "an unset type"


def _spec(value_info: onnx.ValueInfoProto, kind: str) -> TensorSpec:
    """A graph input or output as a TensorSpec; UnsupportedDtypeError naming the tensor for a dtype we cannot serve."""
    if value_info.type.WhichOneof("value") != "tensor_type":
        raise UnsupportedDtypeError(
            f"{kind} {value_info.name!r} is ONNX type {type_name(value_info.type)}, not a tensor: Tandem serves "
            "tensors only (a ZipMap's seq(map(...)) is turned into its [N, classes] tensor by the compiler; "
            "other sequences, maps and optionals are not). Export the model so this "
            f"{kind} is a tensor, or remove it"
        )
    t = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
    dtype = _ONNX_DTYPES.get(t.elem_type)
    if dtype is None:
        from onnx import TensorProto

        known = TensorProto.DataType.Name(t.elem_type) if t.elem_type in TensorProto.DataType.values() else "?"
        why = _REFUSED_DTYPES.get(t.elem_type, f"not one of {', '.join(sorted(set(_ONNX_DTYPES.values())))}")
        raise UnsupportedDtypeError(f"{kind} {value_info.name!r} is ONNX type {known} ({t.elem_type}): {why}")
    return TensorSpec(name=value_info.name, dtype=dtype, shape=dims)


def io_specs(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (initializers excluded) and outputs as manifest TensorSpecs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(v, "input") for v in model.graph.input if v.name not in initializers]
    outputs = [_spec(v, "output") for v in model.graph.output]
    return inputs, outputs


def graphs_within(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """A graph and, depth first, every subgraph its nodes hold (If branches, Loop and Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from graphs_within(attr.g)
            for sub in attr.graphs:
                yield from graphs_within(sub)


def graph_inputs_read(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node reads, in `graph` or any subgraph (outer-scope reads included)."""
    return {name for g in graphs_within(graph) for node in g.node for name in node.input if name}


def drop_unused_initializers(graph: onnx.GraphProto, forget: Collection[str] = ()) -> None:
    """After a rewrite: drop the initializers nothing reads any more (a subgraph's read of an outer one
    counts, as Silero VAD's LSTM branch showed; so does a graph output), and the value_info of the
    tensors in `forget` (gone or renamed)."""
    used = {o.name for o in graph.output} | graph_inputs_read(graph)
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if forget:
        info = [v for v in graph.value_info if v.name not in forget]
        del graph.value_info[:]
        graph.value_info.extend(info)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers and Constant-node tensors, subgraphs included: what quantization shrinks.

    Some exporters (Paddle2ONNX for PP-OCR) store weights as Constant nodes rather
    than initializers, and some (Silero VAD) keep every weight inside `If` branches,
    so all of them count.
    """
    from onnx import numpy_helper

    total = 0
    for graph in graphs_within(model.graph):
        total += sum(numpy_helper.to_array(init).nbytes for init in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.HasField("t"):
                        total += numpy_helper.to_array(attr.t).nbytes
    return total


def subgraph_op_count(model: onnx.ModelProto, op_types: Iterable[str]) -> int:
    """How many nodes of `op_types` sit inside subgraphs (not in the main graph)."""
    wanted = set(op_types)
    return sum(
        1
        for k, graph in enumerate(graphs_within(model.graph))
        if k > 0
        for node in graph.node
        if node.op_type in wanted
    )


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


def numpy_dtype(spec: TensorSpec) -> np.dtype:
    return np.dtype(spec.dtype)
