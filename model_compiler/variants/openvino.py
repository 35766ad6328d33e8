"""OpenVINO variants: IR FP32, IR bf16 (FP32 weights run with bf16 math on AMX/AVX512-BF16 CPUs),
IR FP16 (compressed weights), IR INT8 by NNCF post-training quantization; each with static input
shapes when the profile says `static_shapes` or `tandem-compile --shapes` asks.

INT8 comes from NNCF rather than from the ONNX Runtime QDQ model: measured on this
host's PP-OCRv4 detection at 320x320, NNCF's IR ran batch 1 about 1.8x faster than
FP32 while OpenVINO running the QDQ model was no faster than FP32 (and 2x slower on
the orientation classifier), because NNCF places FakeQuantize where OpenVINO's CPU
plugin fuses it into integer kernels.

bf16 is its own variant, gated like any other, because FP32 must mean FP32 (bf16 moved
PP-OCRv4 det's probabilities by up to 0.54) while bf16 with AMX is where a CPU is fast
(figures: bench/precision.py). Static shapes are applied to the IR itself
(ov.Model.reshape) so a device that needs them (an Intel NPU) gets them, and OpenVINO's
CPU plugin plans memory once instead of per call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from tandem.hardware_profiles import Profile
from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.host import BF16_FEATURES, HostInfo, read_host
from tandem.model_compiler.variants.base import BuildContext, BuiltVariant, Recipe
from tandem.model_compiler.variants.calibration import check_calibration, iter_batches, model_input_shapes
from tandem.model_compiler.variants.shapes import (
    bucket_list,
    bucket_shapes,
    bucket_suffix,
    dynamic_axes,
    fmt_shapes,
)

if TYPE_CHECKING:
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

logger = logging.getLogger(__name__)

RUNTIME = "openvino"
# CPUs with AVX512-BF16 or AMX run FP32 IR in bf16 unless told otherwise; measured on
# PP-OCRv4 det that moved probabilities by up to 0.54. FP32 must mean FP32.
FP32_SESSION_OPTIONS = {"inference_precision": "f32"}
BF16_SESSION_OPTIONS = {"inference_precision": "bf16"}
# NNCF's default subset size; more samples only slow calibration down.
MAX_CALIBRATION_SAMPLES = 300
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class OpenVINOBuilder:
    runtime = RUNTIME

    def __init__(self, host: HostInfo | None = None) -> None:
        """`host`: the CPU the bf16 variant is validated on (default: this machine's, read when needed)."""
        self._host = host

    def recipes(self, profile: Profile) -> list[Recipe]:
        target = profile.runtime_target(RUNTIME)
        if target is None:
            return []
        static = profile.constraints.static_shapes
        shaped = {"static_shapes": True} if static else {}
        tail = "-static" if static else ""
        out: list[Recipe] = []
        if "fp32" in profile.precisions:
            out.append(
                Recipe(
                    f"{RUNTIME}-fp32{tail}",
                    RUNTIME,
                    "fp32",
                    {"compress_to_fp16": False, "inference_precision": "f32", **shaped},
                )
            )
        if "bf16" in profile.precisions and (target.device or "CPU").upper() == "CPU":
            # bf16 is a CPU execution mode of the FP32 IR: OpenVINO's CPU plugin runs it with AMX or
            # AVX512-BF16 and keeps f32 on CPUs without either (the hint is ignored there, never an error).
            out.append(
                Recipe(
                    f"{RUNTIME}-bf16{tail}",
                    RUNTIME,
                    "bf16",
                    {
                        "compress_to_fp16": False,
                        "inference_precision": "bf16",
                        "cpu_features": "any of " + ", ".join(BF16_FEATURES) + " (else it runs in f32)",
                        **shaped,
                    },
                )
            )
        if "fp16" in profile.precisions:
            out.append(Recipe(f"{RUNTIME}-fp16{tail}", RUNTIME, "fp16", {"compress_to_fp16": True, **shaped}))
        if "int8" in profile.precisions:
            # MIXED: symmetric weights, asymmetric activations; PP-OCR's HardSwish/HardSigmoid
            # activations are not ReLU-positive, where the symmetric PERFORMANCE preset loses accuracy.
            out.append(
                Recipe(
                    f"{RUNTIME}-int8-nncf{tail}",
                    RUNTIME,
                    "int8",
                    {"quantizer": "nncf", "preset": "mixed", "fast_bias_correction": True, **shaped},
                )
            )
        return out

    def build(self, recipe: Recipe, ctx: BuildContext) -> BuiltVariant:
        if recipe.precision not in ("fp32", "bf16", "fp16", "int8"):
            raise VariantSkipped(f"openvino builder has no recipe for precision {recipe.precision!r}")
        if recipe.precision == "bf16":
            host = self._host or read_host()
            if not host.has_bf16:
                raise VariantSkipped(
                    f"bf16 needs {' or '.join(BF16_FEATURES)} to be validated, and this host ({host.summary()}) "
                    "has neither: OpenVINO would run it in f32 here, so the accuracy gate could not judge bf16"
                )
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        if not (recipe.options.get("static_shapes") or ctx.shapes):
            xml = ctx.out_dir / f"{recipe.id}.xml"
            model, fixed = _convert_dynamic(ctx)
            notes, session_options = _build_one(recipe, ctx, model, xml)
            notes = fixed + notes
            _check_loads(xml, session_options)
            ctx.log(f"{recipe.id}: wrote {xml.name}")
            return BuiltVariant(
                recipe=recipe, files=[xml, xml.with_suffix(".bin")], notes=notes, session_options=session_options
            )
        return _build_static(recipe, ctx)


def _build_one(recipe: Recipe, ctx: BuildContext, model: Any, xml: Path) -> tuple[list[str], dict[str, object]]:
    """Save `model` (already reshaped, for a static variant) as the recipe's IR at `xml`."""
    session_options: dict[str, object] = {}
    if recipe.precision == "fp32":
        notes = ["IR with FP32 weights; runs with INFERENCE_PRECISION_HINT=f32 so bf16-capable CPUs stay FP32"]
        session_options = dict(FP32_SESSION_OPTIONS)
        _save(model, xml, compress_to_fp16=False)
    elif recipe.precision == "bf16":
        notes = [
            "IR with FP32 weights; runs with INFERENCE_PRECISION_HINT=bf16 (AMX or AVX512-BF16 math, "
            "validated on this host in bf16); a CPU without either runs it in f32"
        ]
        session_options = dict(BF16_SESSION_OPTIONS)
        _save(model, xml, compress_to_fp16=False)
    elif recipe.precision == "fp16":
        notes = [
            "IR with FP16-compressed weights; compute precision is the device's default (f16 on GPU/NPU, "
            "f32 or bf16 on CPU)"
        ]
        _save(model, xml, compress_to_fp16=True)
    else:
        notes = _quantize(model, recipe, ctx, xml)
    return notes, session_options


def _build_static(recipe: Recipe, ctx: BuildContext) -> BuiltVariant:
    """One IR per shape bucket, each reshaped for real (ov.Model.reshape) before it is saved (and, for
    INT8, before NNCF calibrates it on the calibration data fitted to the bucket), then read back to
    check that every input is static."""
    import onnx

    from tandem.tasks.shapes import fit_to

    source = onnx.load(str(ctx.model_path), load_external_data=False)
    buckets = bucket_shapes(source, ctx.calib, ctx.shapes, runtime="OpenVINO with static shapes")
    files: list[Path] = []
    xmls: list[Path] = []
    notes: list[str] = []
    session_options: dict[str, object] = {}
    why = "--shapes" if ctx.shapes else "the profile's static_shapes"
    dynamic = dynamic_axes(source)
    has_if = any(node.op_type == "If" for node in source.graph.node)
    for k, shapes in enumerate(buckets):
        path = ctx.model_path
        if has_if:  # shape-decided Ifs inlined at the bucket's shapes: NNCF cannot compile If bodies of dynamic rank
            path = ctx.out_dir / f".{recipe.id}-{k}.onnx"
            fixed = _fixed_shapes(ctx.model_path, shapes, path)
            notes += fixed if k == 0 else []
        model = _convert(path, shapes)  # at the bucket's shapes: some graphs convert only so
        reshape(model, shapes)
        xml = ctx.out_dir / f"{recipe.id}{bucket_suffix(buckets, shapes)}.xml"
        calib = {  # fitted along the bucketed axes only: samples stay on each input's batch axis
            n: fit_to(np.asarray(a), tuple(shapes[n]), ctx.pad_value) if dynamic.get(n) else a
            for n, a in ctx.calib.items()
        }
        more, session_options = _build_one(recipe, replace(ctx, calib=calib), model, xml)
        if path != ctx.model_path:
            path.unlink(missing_ok=True)
        check_static(xml)
        _check_loads(xml, session_options)
        notes += more if k == 0 else []
        files += [xml, xml.with_suffix(".bin")]
        xmls.append(xml)
        ctx.log(f"{recipe.id}: wrote {xml.name} at {fmt_shapes(shapes)}")
    notes.insert(
        0,
        f"static input shapes ({why}), set in the IR: "
        + "; ".join(fmt_shapes(b) for b in buckets)
        + "; a batch > 1 runs sample by sample",
    )
    return BuiltVariant(
        recipe=recipe,
        files=files,
        notes=notes,
        session_options=session_options,
        buckets=bucket_list(xmls, buckets, dynamic),
        pad_axes={n: a for n, a in dynamic.items() if a},
    )


def _fixed_shapes(model_path: Path, shapes: dict[str, list[int]], out: Path) -> list[str]:
    """Write the ONNX model specialized to static input `shapes` (model_compiler/specialize.py) to `out`."""
    import onnx

    from tandem.model_compiler.errors import CompileError
    from tandem.model_compiler.specialize import fix_shapes

    try:
        fixed = fix_shapes(onnx.load(str(model_path)), shapes)
    except CompileError as exc:
        raise VariantSkipped(f"cannot specialize the model to {fmt_shapes(shapes)}: {exc}") from exc
    onnx.save(fixed.model, str(out))
    return fixed.notes


def reshape(model: Any, shapes: dict[str, list[int]]) -> None:
    """Fix the model's inputs to `shapes` (by input name), in place; VariantSkipped when OpenVINO cannot."""
    import openvino as ov

    by_port = {}
    for port in model.inputs:
        name = next((n for n in port.get_names() if n in shapes), None)
        if name is None:
            raise VariantSkipped(f"OpenVINO input {port.get_any_name()!r} has no static shape to take")
        by_port[port] = ov.PartialShape(shapes[name])
    try:
        model.reshape(by_port)
    except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses
        raise VariantSkipped(f"OpenVINO cannot reshape the model to {fmt_shapes(shapes)}: {_first_line(exc)}") from exc


def check_static(xml: Path) -> dict[str, list[int]]:
    """Read the saved IR back: every input's shape, which must all be static (what an NPU needs)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    shapes = {}
    for port in model.inputs:
        if not port.get_partial_shape().is_static:
            raise VariantSkipped(
                f"{xml.name}: input {port.get_any_name()!r} is {port.get_partial_shape()} after reshape"
            )
        shapes[port.get_any_name()] = [int(d) for d in port.get_shape()]
    return shapes


def _convert(model_path: Path, shapes: dict[str, list[int]] | None = None) -> ov.Model:
    """The ONNX model as an ov.Model, its inputs at `shapes` (-1 stays dynamic) when given."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise VariantSkipped("openvino is not installed (pip install 'tandem[openvino]')") from exc
    telemetry_off()
    try:
        with root_logging_kept():
            if shapes:
                return ov.convert_model(str(model_path), input={n: ov.PartialShape(s) for n, s in shapes.items()})
            return ov.convert_model(str(model_path))
    except Exception as exc:  # OpConversionFailure and friends
        raise VariantSkipped(f"OpenVINO cannot convert the ONNX model: {_conversion_summary(exc)}") from exc


def _convert_dynamic(ctx: BuildContext) -> tuple[ov.Model, list[str]]:
    """The model at its own (dynamic) shapes; failing that, with every dynamic dim but the batch axis
    fixed to the calibration data's. Shape-dependent `If`s (Silero VAD's, after `--bind`) convert
    only so; the IR then says which dims it fixed, and the manifest advertises only those."""
    import onnx

    from tandem.model_compiler.data import batch_axis

    try:
        return _convert(ctx.model_path), []
    except VariantSkipped as exc:
        first = exc
        dims = model_input_shapes(onnx.load(str(ctx.model_path), load_external_data=False))
        shapes: dict[str, list[int]] = {}
        for name, shape in dims.items():
            sample = np.asarray(ctx.calib[name]).shape if name in ctx.calib else None
            axis = batch_axis(shape)
            if sample is None or len(sample) != len(shape):
                shapes[name] = shape
                continue
            shapes[name] = [d if d > 0 or k == axis else int(sample[k]) for k, d in enumerate(shape)]
        if shapes == dims:
            raise first
        try:
            model = _convert(ctx.model_path, shapes)
        except VariantSkipped:
            raise first from None
    return model, [
        f"OpenVINO converts this model only with its non-batch dims fixed: {fmt_shapes(shapes)} "
        "(from the calibration data; at its own shapes: "
        + first.reason.removeprefix("OpenVINO cannot convert the ONNX model: ")
        + ")"
    ]


def _save(model: ov.Model, xml: Path, *, compress_to_fp16: bool) -> None:
    import openvino as ov

    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)


def _quantize(model: ov.Model, recipe: Recipe, ctx: BuildContext, xml: Path) -> list[str]:
    import onnx

    try:
        import nncf
    except ImportError as exc:
        raise VariantSkipped("nncf is not installed (pip install 'tandem[compiler]'); OpenVINO INT8 needs it") from exc
    if ctx.calibration_method not in CALIBRATION_METHODS:
        raise VariantSkipped(
            f"unknown calibration method {ctx.calibration_method!r} (choose one of {', '.join(CALIBRATION_METHODS)})"
        )
    shapes = check_calibration(onnx.load(str(ctx.model_path), load_external_data=False), ctx.calib)
    # One sample per item: NNCF's statistics (and its bias correction) assume batch 1.
    items = list(iter_batches(ctx.calib, shapes, max_batch=1))[:MAX_CALIBRATION_SAMPLES]
    names = list(shapes)
    dataset = nncf.Dataset(items, (lambda item: item[names[0]]) if len(names) == 1 else (lambda item: item))
    preset = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}[
        recipe.options.get("preset", "mixed")
    ]
    kwargs = {}
    if ctx.calibration_method != "minmax":
        kwargs["advanced_parameters"] = _range_estimator(ctx.calibration_method)
    try:
        # NNCF draws progress bars on stdout, which would corrupt a CLI's --json output.
        with contextlib.redirect_stdout(sys.stderr):
            quantized = nncf.quantize(
                model,
                dataset,
                preset=preset,
                subset_size=len(items),
                fast_bias_correction=bool(recipe.options.get("fast_bias_correction", True)),
                **kwargs,
            )
    except Exception as exc:
        raise VariantSkipped(f"NNCF cannot quantize this model: {_openvino_reason(exc)}") from exc
    biases = compress_biases(quantized)
    _save(quantized, xml, compress_to_fp16=False)
    method = {
        "minmax": "NNCF's default min/max",
        "percentile": "percentile, as NNCF mean quantile ranges",
        "entropy": "entropy, as NNCF histogram ranges",
    }[ctx.calibration_method]
    return [
        f"NNCF post-training quantization, preset {recipe.options.get('preset', 'mixed')}, "
        f"fast bias correction, calibrated ({method}) on {len(items)} samples",
        f"{biases} bias constants stored as FP16 (decompressed at load)",
    ]


def compress_biases(model: ov.Model) -> int:
    """Store the float biases of Convolution/MatMul outputs as FP16 + Convert, in place.

    ov.save_model's FP16 compression leaves NNCF's dequantization subgraph alone, so an
    INT8 IR keeps FP32 biases beside its int8 weights; on PP-OCR cls (depthwise convs,
    few weights per channel) that kept the weights file at 0.31x of FP32 instead of
    0.295x. Returns how many constants were replaced.
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    replaced = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Add":
            continue
        for idx in (0, 1):
            const, other = op.input_value(idx).get_node(), op.input_value(1 - idx).get_node()
            if (
                const.get_type_name() == "Constant"
                and const.get_element_type() == ov.Type.f32
                and other.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
            ):
                half = ops.convert(ops.constant(const.get_data().astype(np.float16)), ov.Type.f32)
                op.input(idx).replace_source_output(half.output(0))
                replaced += 1
                break
    return replaced


def _range_estimator(method: str) -> AdvancedQuantizationParameters:
    """NNCF has no percentile/entropy calibrators by those names; its nearest range estimators."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    params = {
        "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE,
        "entropy": RangeEstimatorParametersSet.HISTOGRAM,
    }[method]
    return AdvancedQuantizationParameters(activations_range_estimator_params=params)


def _check_loads(xml: Path, session_options: dict[str, object]) -> None:
    from tandem.hardware_profiles.runtimes import RuntimeUnavailableError, load_session

    try:
        load_session(RUNTIME, xml, **session_options).close()
    except RuntimeUnavailableError as exc:
        raise VariantSkipped(f"OpenVINO cannot load the built {xml.name} on CPU: {_first_line(exc)}") from exc


@contextlib.contextmanager
def root_logging_kept() -> Iterator[None]:
    """The root logger's level and handlers as they were, whatever OpenVINO's converter does to them.

    A failed `ov.convert_model` sets the root logger to ERROR and adds a stderr handler, for the whole
    process: after one unconvertible model (an ai.onnx.ml classifier) every later warning of ours, the
    compiler's or a hub's that compiles, was silently dropped.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)


def telemetry_off() -> None:
    """Decline OpenVINO's (and NNCF's) usage telemetry for this process before either starts it.

    Its first instantiation decides for the whole process (a singleton), and with no consent
    file it sends at exit, which holds an offline machine's exit for ~30 s. The check
    declines when CI=true, so the singleton is created under that setting, then restored.
    """
    try:
        from openvino_telemetry import Telemetry
    except ImportError:
        return
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        Telemetry(app_name="tandem", app_version="0", tid="off", enable_opt_in_dialog=False, disable_in_ci=True)
    except Exception as exc:  # telemetry must never stop a compile
        logger.debug("openvino telemetry: %s", exc)
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved


def _conversion_summary(exc: BaseException) -> str:
    """OpenVINO's useful lines ('Conversion is failed for: LSTM-16', 'No conversion rule found
    for operations: X') rather than its first, which only names a C++ source file."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip()]
    useful = [
        line
        for line in lines
        if "conversion rule" in line
        or "not supported" in line.lower()
        or "conversion is failed for" in line.lower()
        or "failed for:" in line.lower()
    ]
    return "; ".join(useful)[:400] if useful else _first_line(exc)


def _openvino_reason(exc: BaseException) -> str:
    """The line of an OpenVINO exception that says what is wrong ("Unexpected: CPU plug-in doesn't
    support If operation with dynamic rank. ..."), not its first, which names a C++ source file."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return f"{type(exc).__name__}: {said[-1]}"[:400] if said else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]
