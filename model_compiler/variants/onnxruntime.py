"""ONNX Runtime variants: FP32 graph-optimized offline, FP16, INT8 static QDQ.

INT8 only pays when the quantized graph fuses into ORT's integer kernels and adds
little Quantize/Dequantize traffic. The recipe quantizes the weight-heavy ops (Conv,
MatMul, Gemm) per channel after ORT's own pre-processing (constant folding, BatchNorm
fusion), with activation/weight types chosen per CPU feature set. FP32, FP16 and INT8 alike
first fold constant scales/shifts that follow a Conv into it (ort_fold.py).

CHAIN_OPTIONS also quantize the Add/Mul chains between them (QLinearAdd/QLinearMul instead
of a DequantizeLinear-float-QuantizeLinear round trip per op), turn division by a constant
(HardSwish's `/6`) into a multiplication ORT can quantize, and keep non-weight nodes that
produce graph outputs float. Before the fold they cost PP-OCRv4 det its mask IoU gate (0.947
-> 0.899, 7-bit weights; 0.930 -> 0.891, VNNI): its learnable affine blocks re-rounded each conv
output. With it (one thread, CPU time, interleaved rounds, VNNI types): Conv-only 1.16x FP32
(folded too), chains 1.60x, mask IoU 0.931 / 0.932 (docs/figures.md). The PP-OCR classifier's
INT8 stays slower than FP32 either way.

SEARCH_OPTIONS (the default INT8 recipe on x86-64 with VNNI, chains_pay) quantize the chains and
then leave float only the chain tensors that cost the task gate, found per model by a sensitivity search on the calibration set against the
compiler's own gate (ort_sensitivity.py, ort_float_search.py): on det before the fold, one tensor
of 186 (1.38x FP32, IoU 0.930); after it, none (2 evaluations, 7 s).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from tandem.hardware_profiles import Profile
from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.variants.base import BuildContext, BuiltVariant, Recipe
from tandem.model_compiler.variants.calibration import check_calibration, iter_batches

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

logger = logging.getLogger(__name__)

RUNTIME = "onnxruntime"
# Ops whose weights make the bytes and whose integer kernels make the speed: a model without
# any (in its main graph) gets no INT8 variant. The recipe quantizes more than these ("all").
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Recipe options that quantize the chains between weight ops too (module docstring: faster; a
# default recipe uses them only with SEARCH_OPTIONS' check that the model's chains keep its gate).
CHAIN_OPTIONS: dict[str, Any] = {
    "op_types": "all",  # every op ORT's QDQ quantizer handles ...
    "float_nodes": "graph outputs",  # ... but non-weight ops producing outputs (Softmax, Sigmoid) stay float
    "div_to_mul": True,  # x / c -> x * (1/c): QLinearMul instead of a float Div between Q/DQ
}
# CHAIN_OPTIONS, then a sensitivity search (ort_sensitivity.py) leaves float the chain tensors that
# cost the task gate, measured on the calibration set: `share` of the all-float margin is kept,
# within `seconds` (between evaluations).
SEARCH_OPTIONS: dict[str, Any] = {**CHAIN_OPTIONS, "float_search": {"share": 0.25, "seconds": 240}}


@dataclass(frozen=True)
class Int8Types:
    """Activation/weight integer types for ORT's QDQ INT8 and why they were chosen."""

    activation: str  # "uint8" | "int8"
    weight: str  # "int8"
    reduce_range: bool
    reason: str
    symmetric: bool = False  # activations too have zero point 0 (TensorRT takes nothing else)

    @property
    def tag(self) -> str:
        short = {"uint8": "u8", "int8": "s8"}
        tag = f"{short[self.activation]}{short[self.weight]}" + ("-rr" if self.reduce_range else "")
        return tag + ("-sym" if self.symmetric else "")


# TensorRT imports QDQ INT8 only as signed and symmetric (zero point 0) on activations and weights;
# ORT's TensorRT provider hands nodes it cannot build to CUDA or the CPU, so U8 QDQ would not run as INT8 there
TENSORRT_INT8 = Int8Types(
    "int8", "int8", False, "TensorRT execution provider: signed symmetric INT8 (zero point 0), all TensorRT takes", True
)


def int8_types(isa: str, cpu_features: Sequence[str]) -> Int8Types:
    """ONNX Runtime's guidance on quantization data types, per CPU.

    x86-64: U8 activations x S8 weights is the fast path of MLAS (S8S8 is converted and
    measured 1.3-1.5x slower here). Without VNNI the U8S8 kernels use VPMADDUBSW, which
    can saturate its int16 sums, so weights are reduced to 7 bits; VNNI (AVX512-VNNI or
    AVX-VNNI) accumulates in int32 and has no such issue. arm64: S8S8 is ORT's
    recommended default; with dot-product instructions (sdot) it is as fast as U8S8.
    """
    features = set(cpu_features)
    if isa == "arm64":
        if "dotprod" in features or "i8mm" in features:
            return Int8Types("int8", "int8", False, "arm64 with dot-product instructions: S8S8, ORT's default choice")
        return Int8Types("uint8", "int8", False, "arm64 without dotprod: U8S8, faster than S8S8 on low-end cores")
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & features:
        return Int8Types("uint8", "int8", False, "x86-64 with VNNI: U8S8 without saturation")
    return Int8Types(
        "uint8",
        "int8",
        True,
        "x86-64 without VNNI: U8S8 with 7-bit weights (reduce_range) to avoid VPMADDUBSW saturation",
    )


def chains_pay(isa: str, types: Int8Types) -> bool:
    """Whether the default INT8 recipe quantizes the chains too (SEARCH_OPTIONS): on x86-64 with
    VNNI, where it was measured (PP-OCRv4 det, one thread, CPU time, 5 interleaved rounds: 1.62x
    FP32 against 1.16x for Conv-only, mask IoU 0.932 vs 0.931; the search guards the gate on other
    models). Not measured elsewhere (7-bit weights without VNNI, arm64), so Conv-only stays there."""
    return isa != "arm64" and types.activation == "uint8" and not types.reduce_range


class OnnxRuntimeBuilder:
    runtime = RUNTIME

    def recipes(self, profile: Profile) -> list[Recipe]:
        if RUNTIME not in profile.runtime_names:
            return []
        out: list[Recipe] = []
        if "fp32" in profile.precisions:
            out.append(Recipe(f"{RUNTIME}-fp32", RUNTIME, "fp32", {"graph_optimization": "basic"}))
        if "fp16" in profile.precisions:
            out.append(Recipe(f"{RUNTIME}-fp16", RUNTIME, "fp16", {"keep_io_types": True}))
        if "int8" in profile.precisions:
            target = profile.runtime_target(RUNTIME)
            tensorrt = target is not None and "TensorrtExecutionProvider" in target.execution_providers
            types = TENSORRT_INT8 if tensorrt else int8_types(profile.isa, profile.cpu_features)
            options: dict[str, Any] = {
                "format": "QDQ",
                "per_channel": True,
                "activation_type": types.activation,
                "weight_type": types.weight,
                "reduce_range": types.reduce_range,
                "activation_symmetric": types.symmetric,
                "op_types": list(QUANTIZED_OP_TYPES),
                "why": types.reason,
            }
            rid = f"{RUNTIME}-int8-{types.tag}"
            if chains_pay(profile.isa, types):
                options.update(SEARCH_OPTIONS)
                rid += "-chains"
            out.append(Recipe(rid, RUNTIME, "int8", options))
        return out

    def build(self, recipe: Recipe, ctx: BuildContext) -> BuiltVariant:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise VariantSkipped("onnxruntime is not installed (pip install 'tandem[compiler]')") from exc
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        out = ctx.out_dir / f"{recipe.id}.onnx"
        if recipe.precision == "fp32":
            notes = _optimize_offline(ctx.model_path, out)
        elif recipe.precision == "fp16":
            notes = _build_fp16(ctx, out)
        elif recipe.precision == "int8":
            notes = _build_int8(recipe, ctx, out)
        else:
            raise VariantSkipped(f"onnxruntime builder has no recipe for precision {recipe.precision!r}")
        _check_loads(out)
        ctx.log(f"{recipe.id}: wrote {out.name}")
        return BuiltVariant(recipe=recipe, files=[out], notes=notes)


def _session_options(level: str = "basic") -> ort.SessionOptions:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    return options


def _optimize_offline(src: Path, out: Path) -> list[str]:
    """ORT's basic (portable) graph optimizations, saved: constant folding, BN/Conv fusion,
    redundant-node removal. Extended/layout levels are left to load time because they
    write CPU-specific ops that other hosts or execution providers cannot load."""
    import onnxruntime as ort

    options = _session_options("basic")
    options.optimized_model_filepath = str(out)
    try:
        ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise VariantSkipped(f"onnxruntime cannot load the FP32 model to optimize it: {_first_line(exc)}") from exc
    return ["graph optimized offline at ORT_ENABLE_BASIC (portable across hosts and providers)"] + _fold(out)


def _fold(path: Path) -> list[str]:
    """ort_fold.py: constant scales/shifts after a Conv go into its weights (FP32 and INT8 alike, so
    INT8 is compared with an FP32 that has the same fold)."""
    from tandem.model_compiler.variants.ort_fold import fold_conv_affine_file

    folded = fold_conv_affine_file(path)
    return [f"{folded} constant Mul/Add after a Conv folded into its weights and bias"] if folded else []


def _build_fp16(ctx: BuildContext, out: Path) -> list[str]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tandem.model_compiler.ml_types import type_ml_outputs

    if _already_float16(onnx.load(str(ctx.model_path))):
        # ORT's offline optimizer would bake in the CPU provider's float16 -> float casts, which the converter
        # then retypes into a graph that does not load: an FP16 model is its own FP16 variant
        shutil.copyfile(ctx.model_path, out)
        return ["the model is FP16 already (weights, inputs and outputs): built as given"]
    optimized = ctx.out_dir / f".{out.stem}.fp32-basic.onnx"
    _optimize_offline(ctx.model_path, optimized)
    try:
        source = onnx.load(str(optimized))
        typed = type_ml_outputs(source)  # ORT's optimizer drops value_info: type them again for the converter
        model = convert_float_to_float16(source, keep_io_types=True)
        onnx.save(model, str(out))
    except Exception as exc:
        raise VariantSkipped(f"FP16 conversion failed: {_first_line(exc)}") from exc
    finally:
        optimized.unlink(missing_ok=True)
    return ["weights and compute in FP16; inputs and outputs stay FP32 (keep_io_types)"] + (
        [f"{typed} ai.onnx.ml output(s) stay FP32, cast to FP16 after the operator"] if typed else []
    )


def _already_float16(model: onnx.ModelProto) -> bool:
    """Float16 weights or inputs and no float32 ones: an FP16 model as exported (float16 IO natively)."""
    from onnx import TensorProto

    from tandem.model_compiler.model_io import graphs_within

    types = {init.data_type for graph in graphs_within(model.graph) for init in graph.initializer}
    types |= {v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    return TensorProto.FLOAT16 in types and TensorProto.FLOAT not in types


class _Reader:
    """onnxruntime CalibrationDataReader over ctx.calib."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # part of the reader interface in newer ORT; one pass is enough
        pass


def _op_types(opts: Mapping[str, Any], calib: Mapping[str, np.ndarray]) -> list[str] | None:
    """The recipe's op types (None: every op the quantizer handles), plus Gather for a model fed
    integer ids: its embedding table is most of such a model's weights (an int32-token
    classifier shrinks ~4x only with it)."""
    asked = opts.get("op_types", QUANTIZED_OP_TYPES)
    if asked == "all":
        return None
    ops = list(asked)
    if any(np.asarray(v).dtype.kind in "iub" for v in calib.values()) and "Gather" not in ops:
        ops.append("Gather")
    return ops


def _check_weights_reachable(model: onnx.ModelProto) -> None:
    """Refuse, with the true reason, a model whose quantizable layers all sit inside subgraphs
    (Silero VAD keeps every Conv in the branches of an `If` on its sample rate): ONNX Runtime's
    static quantizer does not enter subgraphs (its EnableSubgraph option is for dynamic
    quantization only), so the "INT8" file would be FP32 under another name."""
    from tandem.model_compiler.model_io import subgraph_op_count, weight_bytes

    if any(node.op_type in QUANTIZED_OP_TYPES for node in model.graph.node):
        return
    inside = subgraph_op_count(model, QUANTIZED_OP_TYPES)
    if inside:
        raise VariantSkipped(
            f"all {inside} {'/'.join(QUANTIZED_OP_TYPES)} ops ({weight_bytes(model) / 2**20:.1f} MiB of weights) "
            "sit inside If/Loop subgraphs, which ONNX Runtime's static quantizer does not enter; INT8 would equal FP32"
        )


def _build_int8(recipe: Recipe, ctx: BuildContext, out: Path) -> list[str]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if ctx.calibration_method not in CALIBRATION_METHODS:
        raise VariantSkipped(
            f"unknown calibration method {ctx.calibration_method!r} (choose one of {', '.join(CALIBRATION_METHODS)})"
        )
    model = onnx.load(str(ctx.model_path))
    input_shapes = check_calibration(model, ctx.calib)
    _check_weights_reachable(model)
    notes: list[str] = []
    pre = ctx.out_dir / f".{out.stem}.pre.onnx"
    notes += _pre_process(ctx.model_path, pre)
    unfused = unfuse_gemm(pre)
    if unfused:
        notes.append(f"{unfused} Gemm rewritten as MatMul+Add so ORT fuses them into QLinearMatMul")
    notes += _fold(pre)
    opts = recipe.options
    if opts.get("div_to_mul"):
        divs = div_to_mul(pre)
        if divs:
            notes.append(f"{divs} Div by a constant rewritten as Mul by its reciprocal, quantized as QLinearMul")
    keep_float = output_nodes(pre) if opts.get("float_nodes") == "graph outputs" else []
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[ctx.calibration_method]
    # Histogram calibrators (percentile, entropy) stack per-batch arrays and need equal
    # batch sizes; batch 1 guarantees that. MinMax takes any batch.
    batches = iter_batches(ctx.calib, input_shapes, max_batch=8 if ctx.calibration_method == "minmax" else 1)
    op_types = _op_types(opts, ctx.calib)  # what the notes report is what was asked for
    try:
        # ORT's calibrators print progress to stdout, which would corrupt a CLI's --json output.
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(pre),
                str(out),
                _Reader(batches),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                nodes_to_exclude=keep_float,
                per_channel=bool(opts.get("per_channel", True)),
                reduce_range=bool(opts.get("reduce_range", False)),
                activation_type=qtype[opts.get("activation_type", "uint8")],
                weight_type=qtype[opts.get("weight_type", "int8")],
                calibrate_method=method,
                # Float biases: ORT folds them into QLinearConv/MatMulInteger at load time, so
                # int32 bias + scale + zero point initializers would only grow the file.
                extra_options={
                    "QuantizeBias": False,
                    "QDQDisableWeightAdjustForInt32Bias": True,
                    "ActivationSymmetric": bool(opts.get("activation_symmetric", False)),
                },
            )
        if opts.get("float_search") is not None:
            notes += _float_search(out, pre, ctx, input_shapes, opts["float_search"])
    except VariantSkipped:
        raise
    except Exception as exc:
        raise VariantSkipped(f"onnxruntime's quantizer cannot quantize this model: {_first_line(exc)}") from exc
    finally:
        pre.unlink(missing_ok=True)
    stripped = strip_zero_points(out)
    quantized = sum(1 for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear")
    if quantized == 0:
        out.unlink(missing_ok=True)
        raise VariantSkipped(
            f"no {'/'.join(QUANTIZED_OP_TYPES)} op with constant weights to quantize; INT8 would equal FP32"
        )
    notes.append(
        f"QDQ {opts.get('activation_type')}/{opts.get('weight_type')} per-channel, "
        f"reduce_range={opts.get('reduce_range')}, calibrated ({ctx.calibration_method}) on "
        f"{len(next(iter(ctx.calib.values())))} samples; quantized ops: "
        + (", ".join(op_types) if op_types is not None else "every op ORT's QDQ quantizer handles")
        + (f"; kept float (they produce graph outputs): {', '.join(keep_float)}" if keep_float else "")
    )
    if stripped:
        notes.append(f"dropped {stripped} all-zero weight zero-point initializers (optional in DequantizeLinear)")
    return notes


def _float_search(
    out: Path, pre: Path, ctx: BuildContext, shapes: Mapping[str, list[int]], options: Mapping[str, Any]
) -> list[str]:
    """SEARCH_OPTIONS: leave float the chain tensors that cost the task gate (ort_float_search.py)."""
    from tandem.model_compiler.variants.ort_float_search import search_float_tensors

    if ctx.task is None or not ctx.task.budgets:  # a direct builder call, or a labelled classifier
        return [
            "float-tensor search skipped: no task budget to search against (no task given, or a classifier "
            "judged on labelled accuracy); every chain quantized, the compile's gate judges the variant"
        ]
    try:
        _, notes = search_float_tensors(
            out, pre, ctx.model_path, ctx.calib, shapes, ctx.task, ctx.dense_threshold, options, ctx.log
        )
    except VariantSkipped:
        raise
    except Exception as exc:  # a graph this search cannot edit: say so, not "cannot quantize"
        raise VariantSkipped(f"float-tensor search failed: {_first_line(exc)}") from exc
    return notes


def _pre_process(src: Path, dst: Path) -> list[str]:
    """ORT's quant_pre_process: basic graph optimization (folds Constant nodes into
    initializers and BatchNorm into Conv, so those weights get quantized) and shape
    inference. Symbolic shape inference runs when sympy is installed; it matters for
    models with symbolic dims (transformers), not for the CNNs and MLPs here."""
    import importlib.util

    from onnxruntime.quantization.shape_inference import quant_pre_process

    attempts = (False, True) if importlib.util.find_spec("sympy") else (True,)
    for skip_symbolic in attempts:
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return (
                ["symbolic shape inference failed; quantized with ONNX shape inference only"]
                if skip_symbolic and len(attempts) == 2
                else []
            )
        except Exception as exc:  # the pre-processor raises whatever its passes raise
            logger.info("quant_pre_process (skip_symbolic_shape=%s) failed: %s", skip_symbolic, _first_line(exc))
    shutil.copyfile(src, dst)
    return ["ORT quantization pre-processing failed; quantized the model as given"]


def unfuse_gemm(path: Path) -> int:
    """Rewrite Gemm (alpha=beta=1, no transA, constant B) as MatMul + Add, in place.

    ORT's pre-processing fuses MatMul+Add into Gemm, but ORT fuses a QDQ MatMul into
    QLinearMatMul and leaves a QDQ Gemm as dequantize-every-call plus a float Gemm:
    measured on the digits cloud MLP, INT8 ran 11x slower than FP32 that way and about
    as fast as FP32 after this rewrite. Returns how many Gemms were rewritten.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
            or attrs.get("transA", 0)
            or node.input[1] not in inits
        ):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            transposed = numpy_helper.to_array(inits[weight]).T.copy()
            weight = f"{node.input[1]}_transposed"
            if weight not in inits:
                inits[weight] = numpy_helper.from_array(transposed, weight)
                model.graph.initializer.append(inits[weight])
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for node in model.graph.node for name in node.input}
        keep = [init for init in model.graph.initializer if init.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        onnx.save(model, str(path))
    return rewritten


def output_nodes(path: Path) -> list[str]:
    """Names of the nodes other than Conv/MatMul/Gemm that produce graph outputs (named here if
    unnamed): kept float so a classifier's Softmax or a detector's Sigmoid map keeps its full
    resolution. A weight op producing an output stays quantized, as in the Conv-only recipe
    (its weights are most of a small model's bytes)."""
    import onnx

    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}
    named = 0
    found = []
    for k, node in enumerate(model.graph.node):
        if set(node.output) & outputs and node.op_type not in QUANTIZED_OP_TYPES:
            if not node.name:
                node.name = f"tandem_output_{k}"
                named += 1
            found.append(node.name)
    if named:
        onnx.save(model, str(path))
    return found


def div_to_mul(path: Path) -> int:
    """Rewrite Div(x, c) with a constant float c (no zeros) as Mul(x, 1/c), in place.

    ORT's QDQ quantizer has no integer Div, so each Div between quantized ops costs a
    DequantizeLinear, a float Div and a QuantizeLinear; a Mul becomes QLinearMul. PP-OCR's
    HardSwish is exported as x * Clip(x + 3, 0, 6) / 6 (24 Divs in PP-OCRv4 det). The
    result differs from x / c by at most an ulp. Returns how many Divs were rewritten.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    made: set[str] = set()
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Div" or len(node.input) != 2 or node.input[1] not in inits or node.input[1] in graph_inputs:
            continue
        divisor = numpy_helper.to_array(inits[node.input[1]])
        if divisor.dtype != np.float32 or not np.all(divisor != 0) or not np.all(np.isfinite(divisor)):
            continue
        name = f"{node.input[1]}_reciprocal"
        if name not in made and name not in inits:
            model.graph.initializer.append(numpy_helper.from_array((1.0 / divisor).astype(np.float32), name))
            made.add(name)
        node.op_type = "Mul"
        node.input[1] = name
        rewritten += 1
    if rewritten:
        onnx.save(model, str(path))
    return rewritten


def strip_zero_points(path: Path) -> int:
    """Drop all-zero zero-points of weight DequantizeLinear nodes (int8/int32 x), which
    default to 0 of x's type; saves one byte per output channel. Returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {init.name: init for init in model.graph.initializer}
    stripped = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) != 3:
            continue
        x, zp = node.input[0], node.input[2]
        if x in inits and zp in inits:
            z = numpy_helper.to_array(inits[zp])
            if z.dtype in (np.int8, np.int32) and not z.any():
                del node.input[2]
                stripped += 1
    if stripped:
        from tandem.model_compiler.model_io import drop_unused_initializers

        drop_unused_initializers(model.graph)  # subgraphs count (Silero VAD's LSTM branch)
        onnx.save(model, str(path))
    return stripped


def _check_loads(path: Path) -> None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), sess_options=_session_options("basic"), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise VariantSkipped(f"onnxruntime cannot load the built {path.name}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]
