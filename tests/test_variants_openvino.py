"""OpenVINO IR variants built from real models load in real OpenVINO and agree with FP32."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tandem.hardware_profiles import get_profile
from tandem.hardware_profiles.runtimes import load_session
from tandem.hardware_profiles.runtimes.openvino import OpenVINOSession
from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.model_io import prepare_model
from tandem.model_compiler.variants import BuildContext, get_builder


ALL = ("fp32", "fp16", "int8")


def _profile(name: str = "cpu-x86", **changes):
    return dataclasses.replace(get_profile(name), **changes)


def _prepared(src: Path, out_dir: Path) -> tuple[Path, str]:
    path = out_dir / "prepared.onnx"
    model, _ = prepare_model(onnx.load(str(src)), path)
    return path, model.graph.input[0].name


def _run(variant, name: str, x: np.ndarray) -> np.ndarray:
    session = load_session("openvino", variant.files[0], **variant.session_options)
    return session.run({session.inputs[0].name: x})[0]


def test_recipes_offer_only_the_precisions_a_profile_lists():
    builder = get_builder("openvino")
    ids = ["openvino-fp32", "openvino-bf16", "openvino-int8-nncf"]
    assert [r.id for r in builder.recipes(get_profile("cpu-x86"))] == ids
    assert [r.precision for r in builder.recipes(get_profile("gpu-intel"))] == ["fp32", "fp16", "int8"]
    # npu-intel says static_shapes: its IRs are built at fixed shapes, under their own ids
    assert [r.id for r in builder.recipes(get_profile("npu-intel"))] == [
        "openvino-fp16-static",
        "openvino-int8-nncf-static",
    ]
    assert builder.recipes(get_profile("cpu-arm")) == []  # no OpenVINO there


def test_adapter_pins_inference_precision_and_stays_backward_compatible(digits_dir):
    pinned = OpenVINOSession(digits_dir / "edge.onnx", inference_precision="f32")
    assert str(pinned._compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    OpenVINOSession(digits_dir / "edge.onnx", device="CPU", threads=1, performance_hint="THROUGHPUT").close()


@pytest.mark.parametrize("which", ["edge", "cloud"])
def test_digits_ir_variants_load_and_agree_with_fp32(digits_dir, tmp_path, which, record_property):
    prepared, name = _prepared(digits_dir / f"{which}.onnx", tmp_path)
    calib, val = np.load(digits_dir / "calib.npz"), np.load(digits_dir / "val.npz")
    ctx = BuildContext(model_path=prepared, calib={name: calib["x"]}, out_dir=tmp_path / "out")
    reference = load_session("onnxruntime", prepared).run({name: val["x"]})[0]
    builder = get_builder("openvino")
    built = {r.precision: builder.build(r, ctx) for r in builder.recipes(_profile(precisions=ALL))}
    assert set(built) == set(ALL)
    for precision, variant in built.items():
        assert [f.suffix for f in variant.files] == [".xml", ".bin"] and all(f.is_file() for f in variant.files)
        out = _run(variant, name, val["x"])
        agreement = float(np.mean(out.argmax(axis=1) == reference.argmax(axis=1)))
        record_property(f"{which}_{precision}_top1_agreement", agreement)
        assert agreement >= 0.99, f"{which} {precision}: top-1 agreement {agreement:.4f} < 0.99"
    # FP32 runs pinned to f32: on bf16-capable CPUs the default would move the outputs
    assert built["fp32"].session_options == {"inference_precision": "f32"}
    assert np.abs(_run(built["fp32"], name, val["x"]) - reference).max() < 1e-4
    fp32_bin, int8_bin = (built[p].files[1].stat().st_size for p in ("fp32", "int8"))
    assert int8_bin <= 0.3 * fp32_bin, f"INT8 weights {int8_bin} vs FP32 {fp32_bin}"


@pytest.mark.slow
def test_ocr_classifier_nncf_int8_shrinks_and_agrees(ocr_cls_model, tmp_path, record_property):
    from make_data import make_cls_data

    prepared, name = _prepared(ocr_cls_model, tmp_path)
    x_calib, _ = make_cls_data(24, seed=1)
    x_val, _ = make_cls_data(48, seed=2)
    builder = get_builder("openvino")
    ctx = BuildContext(model_path=prepared, calib={name: x_calib}, out_dir=tmp_path / "out")
    recipes = {r.precision: r for r in builder.recipes(_profile())}
    fp32, int8 = builder.build(recipes["fp32"], ctx), builder.build(recipes["int8"], ctx)
    ratio = int8.files[1].stat().st_size / fp32.files[1].stat().st_size
    record_property("ocr_cls_openvino_int8_weight_ratio", ratio)
    assert ratio <= 0.3, f"INT8 IR weights are {ratio:.3f}x FP32"
    assert any("bias constants stored as FP16" in n for n in int8.notes)
    reference = load_session("onnxruntime", prepared).run({name: x_val})[0]
    out = _run(int8, name, x_val)
    assert float(np.mean(out.argmax(axis=1) == reference.argmax(axis=1))) >= 0.95


def test_bad_calibration_data_skips_int8_with_a_reason(digits_dir, tmp_path):
    prepared, name = _prepared(digits_dir / "edge.onnx", tmp_path)
    recipe = get_builder("openvino").recipes(_profile())[-1]
    ctx = BuildContext(model_path=prepared, calib={name: np.zeros((8, 63), np.float32)}, out_dir=tmp_path / "out")
    with pytest.raises(VariantSkipped, match=r"has shape \[8, 63\]"):
        get_builder("openvino").build(recipe, ctx)
    ctx.calib, ctx.calibration_method = {name: np.zeros((8, 64), np.float32)}, "kl"
    with pytest.raises(VariantSkipped, match="unknown calibration method 'kl'"):
        get_builder("openvino").build(recipe, ctx)


def test_percentile_calibration_maps_to_an_nncf_range_estimator(digits_dir, tmp_path):
    prepared, name = _prepared(digits_dir / "edge.onnx", tmp_path)
    calib, val = np.load(digits_dir / "calib.npz"), np.load(digits_dir / "val.npz")
    recipe = get_builder("openvino").recipes(_profile())[-1]
    ctx = BuildContext(
        model_path=prepared, calib={name: calib["x"]}, out_dir=tmp_path / "out", calibration_method="percentile"
    )
    variant = get_builder("openvino").build(recipe, ctx)
    assert any("percentile" in n for n in variant.notes)
    reference = load_session("onnxruntime", prepared).run({name: val["x"]})[0]
    assert float(np.mean(_run(variant, name, val["x"]).argmax(1) == reference.argmax(1))) >= 0.97


def test_model_openvino_cannot_convert_is_skipped_with_the_op_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "custom.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
        str(path),
    )
    ctx = BuildContext(model_path=path, calib={"x": np.ones((2, 4), np.float32)}, out_dir=tmp_path / "out")
    with pytest.raises(VariantSkipped) as info:
        get_builder("openvino").build(get_builder("openvino").recipes(_profile())[0], ctx)
    assert "OpenVINO cannot convert" in info.value.reason and "Frobnicate" in info.value.reason
