"""LiteRT (TFLite) variants: FP32 and full-integer INT8, lowered from ONNX by our own
converter (model_compiler.litert), so no TensorFlow is needed.

TFLite wants static shapes: a variant is lowered at batch 1 (unless the model fixes
its batch) with other dynamic dims taken from the calibration data; the LiteRT
session runs a batched request sample by sample. Inputs and outputs keep the ONNX
names, NCHW layout and float32 dtype unless the profile demands int8 I/O.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tandem.hardware_profiles import Profile
from tandem.hardware_profiles.runtimes import RuntimeUnavailableError, load_session
from tandem.model_compiler.errors import CompileError, UnsupportedOpError, VariantSkipped
from tandem.model_compiler.variants.base import BuildContext, BuiltVariant, Recipe
from tandem.model_compiler.data import batch_axis
from tandem.model_compiler.variants.calibration import check_calibration, model_input_shapes
from tandem.model_compiler.variants.shapes import (
    bucket_list,
    bucket_shapes,
    bucket_suffix,
    dynamic_axes,
    fmt_shapes as _fmt,
)
from tandem.tasks.shapes import fit_to

if TYPE_CHECKING:
    from onnx import ModelProto

    from tandem.model_compiler.litert.graph import Lowered

__all__ = ["LiteRTBuilder", "bucket_shapes"]  # bucket_shapes lives in variants/shapes.py; kept importable here

logger = logging.getLogger(__name__)

RUNTIME = "litert"
MAX_CALIB_SAMPLES = 256


class LiteRTBuilder:
    runtime = RUNTIME

    def recipes(self, profile: Profile) -> list[Recipe]:
        if RUNTIME not in profile.runtime_names:
            return []
        common = {"batch": 1, "layout": "as the ONNX model (NCHW inputs are transposed inside the graph)"}
        out: list[Recipe] = []
        if "fp32" in profile.precisions:
            out.append(Recipe(f"{RUNTIME}-fp32", RUNTIME, "fp32", {**common, "io": "float32"}))
        if "int8" in profile.precisions:
            int8_io = profile.constraints.int8_only_io
            out.append(
                Recipe(
                    f"{RUNTIME}-int8" + ("-int8io" if int8_io else ""),
                    RUNTIME,
                    "int8",
                    {
                        **common,
                        "io": "int8" if int8_io else "float32",
                        "weights": "int8 symmetric per-channel",
                        "activations": "int8 asymmetric per-tensor",
                        "bias": "int32",
                    },
                )
            )
        return out

    def build(self, recipe: Recipe, ctx: BuildContext) -> BuiltVariant:
        import onnx

        if recipe.precision not in ("fp32", "int8"):
            raise VariantSkipped(f"litert builder has no recipe for precision {recipe.precision!r}")
        model = onnx.load(str(ctx.model_path))
        off_axis = {name: batch_axis(dims) for name, dims in model_input_shapes(model).items() if batch_axis(dims) != 0}
        if off_axis:  # TFLite resizes and batches on axis 0 only
            raise VariantSkipped(
                "LiteRT variants batch every input on axis 0; "
                + ", ".join(
                    f"{name!r} is {'a scalar' if axis is None else f'batched on axis {axis}'}"
                    for name, axis in off_axis.items()
                )
            )
        buckets = bucket_shapes(model, ctx.calib, ctx.shapes)
        files: list[Path] = []
        notes: list[str] = []
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        for k, shapes in enumerate(buckets):
            out = ctx.out_dir / f"{recipe.id}{bucket_suffix(buckets, shapes)}.tflite"
            notes += self._build_one(recipe, ctx, model, shapes, out, first=k == 0)
            files.append(out)
        session_options = {"float_io": True}
        for out in files:
            _check_loads(out, session_options)
        dynamic = dynamic_axes(model)
        if len(buckets) > 1:
            notes.insert(0, f"{len(buckets)} static shape buckets (--shapes): " + "; ".join(_fmt(b) for b in buckets))
        return BuiltVariant(
            recipe=recipe,
            files=files,
            notes=notes,
            session_options=session_options,
            buckets=bucket_list(files, buckets, dynamic),
            pad_axes={n: a for n, a in dynamic.items() if a},
        )

    def _build_one(
        self, recipe: Recipe, ctx: BuildContext, model: ModelProto, shapes: dict[str, list[int]], out: Path, first: bool
    ) -> list[str]:
        """Lower (and for INT8 calibrate) the model at one set of static shapes into `out`."""
        from tandem.model_compiler.litert import lower, write
        from tandem.model_compiler.litert.graph import share_constants

        try:
            lowered = lower(model, shapes, for_int8=recipe.precision == "int8")
        except UnsupportedOpError as exc:
            raise VariantSkipped(f"LiteRT lowering stopped at operator {exc.op_type}: {exc}") from exc
        except CompileError as exc:
            raise VariantSkipped(f"LiteRT lowering failed at {_fmt(shapes)}: {exc}") from exc
        notes = [
            f"lowered at static input shape(s) {_fmt(shapes)}; a batch > 1 runs sample by sample",
        ]
        if first:
            notes.append(
                "TFLite ops: "
                + ", ".join(f"{k} x{v}" for k, v in sorted(Counter(op.kind for op in lowered.graph.ops).items()))
            )
        try:
            float_bytes = write(lowered.graph)
        except CompileError as exc:
            raise VariantSkipped(f"LiteRT lowering failed: {exc}") from exc
        if (
            recipe.precision == "fp32"
        ):  # equal constants shared only in the file: calibration reads float_bytes by index
            data = write(share_constants(copy.deepcopy(lowered.graph)))
        else:
            calib = {
                n: fit_to(np.asarray(a), tuple(shapes[n]), ctx.pad_value) if n in shapes else a
                for n, a in ctx.calib.items()
            }
            data, more = _int8(lowered, float_bytes, replace(ctx, calib=calib), recipe.options.get("io") == "int8")
            notes += more if first else []
        out.write_bytes(data)
        ctx.log(f"{recipe.id}: wrote {out.name} ({len(data)} bytes)")
        return notes


def _int8(lowered: Lowered, float_bytes: bytes, ctx: BuildContext, int8_io: bool) -> tuple[bytes, list[str]]:
    from tandem.model_compiler.litert import write
    from tandem.model_compiler.litert.calibrate import collect_ranges
    from tandem.model_compiler.litert.quantize import quantize

    import onnx

    check_calibration(onnx.load(str(ctx.model_path)), ctx.calib)
    method = ctx.calibration_method if ctx.calibration_method in ("minmax", "percentile") else "minmax"
    try:
        ranges = collect_ranges(float_bytes, lowered.graph, ctx.calib, lowered.input_names, MAX_CALIB_SAMPLES, method)
        graph = quantize(lowered.graph, ranges, int8_io=int8_io)
    except RuntimeUnavailableError as exc:
        raise VariantSkipped(f"LiteRT is not installed here, so INT8 cannot be calibrated: {exc}") from exc
    except CompileError as exc:
        raise VariantSkipped(f"LiteRT INT8 quantization failed: {exc}") from exc
    n = min(len(np.asarray(ctx.calib[name])) for name in lowered.input_names)
    notes = [
        f"full-integer INT8 calibrated ({method}) on {min(n, MAX_CALIB_SAMPLES)} samples; "
        f"I/O {'int8 (the session quantizes float feeds with the input scale)' if int8_io else 'float32 with QUANTIZE/DEQUANTIZE inside'}"
    ]
    if ctx.calibration_method != method:
        notes.append(f"calibration method {ctx.calibration_method!r} is not implemented for LiteRT; used {method}")
    return write(graph), notes


def _check_loads(path: Path, session_options: dict) -> None:
    try:
        load_session(RUNTIME, path, **session_options).close()
    except RuntimeUnavailableError as exc:
        raise VariantSkipped(str(exc)) from exc
