"""ONNX Runtime variants built from real models load in real ONNX Runtime and agree with FP32."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tandem.hardware_profiles import get_profile
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.model_io import prepare_model, weight_bytes
from tandem.model_compiler.variants import BuildContext, get_builder
from tandem.model_compiler.variants.onnxruntime import int8_types


ALL = ("fp32", "fp16", "int8")


def _profile(name: str = "cpu-x86", **changes):
    return dataclasses.replace(get_profile(name), **changes)


def _prepared(src: Path, out_dir: Path) -> tuple[Path, str]:
    path = out_dir / "prepared.onnx"
    model, _ = prepare_model(onnx.load(str(src)), path)
    return path, model.graph.input[0].name


def _top1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


# --- recipes: pure, per profile ---------------------------------------------------------


def test_recipes_offer_only_the_precisions_a_profile_lists():
    builder = get_builder("onnxruntime")
    ids = [r.id for r in builder.recipes(get_profile("cpu-x86"))]
    assert ids == ["onnxruntime-fp32", "onnxruntime-int8-u8s8-rr"]  # cpu-x86 lists avx2, no VNNI
    gpu = [r.precision for r in builder.recipes(get_profile("gpu-cuda"))]
    assert gpu == ["fp32", "fp16", "int8"]
    assert builder.recipes(get_profile("npu-intel")) == []  # OpenVINO-only profile


def test_int8_types_follow_onnxruntime_guidance_per_cpu():
    assert int8_types("x86_64", ["avx2"]).tag == "u8s8-rr"  # VPMADDUBSW saturation: 7-bit weights
    assert int8_types("x86_64", ["avx2", "avx512_vnni"]).tag == "u8s8"
    assert int8_types("x86_64", ["avx2", "avx_vnni"]).tag == "u8s8"
    assert int8_types("arm64", ["neon", "dotprod"]).tag == "s8s8"
    assert int8_types("arm64", ["neon"]).tag == "u8s8"
    recipe = get_builder("onnxruntime").recipes(get_profile("cpu-arm"))[-1]
    assert recipe.id == "onnxruntime-int8-s8s8" and recipe.options["activation_type"] == "int8"


# --- digits: every precision loads and agrees -------------------------------------------


@pytest.mark.parametrize("which", ["edge", "cloud"])
def test_digits_variants_load_in_onnxruntime_and_agree_with_fp32(digits_dir, tmp_path, which, record_property):
    prepared, name = _prepared(digits_dir / f"{which}.onnx", tmp_path)
    calib, val = np.load(digits_dir / "calib.npz"), np.load(digits_dir / "val.npz")
    ctx = BuildContext(model_path=prepared, calib={name: calib["x"]}, out_dir=tmp_path / "out")
    reference = load_session("onnxruntime", prepared).run({name: val["x"]})[0]
    builder = get_builder("onnxruntime")
    profile = _profile(precisions=ALL, cpu_features=("avx2", "avx512_vnni"))
    built = {r.precision: builder.build(r, ctx) for r in builder.recipes(profile)}
    assert set(built) == set(ALL)
    for precision, variant in built.items():
        assert variant.files[0].parent == ctx.out_dir and variant.files[0].is_file()
        session = load_session("onnxruntime", variant.files[0], **variant.session_options)
        out = session.run({name: val["x"]})[0]
        agreement = _top1(out, reference)
        record_property(f"{which}_{precision}_top1_agreement", agreement)
        assert agreement >= 0.99, f"{which} {precision}: top-1 agreement {agreement:.4f} < 0.99"
    # skl2onnx's MatMul+Add becomes Gemm in ORT's pre-processing; QDQ Gemm does not fuse
    int8_ops = {n.op_type for n in onnx.load(str(built["int8"].files[0])).graph.node}
    assert "Gemm" not in int8_ops and "MatMul" in int8_ops
    fp32 = load_session("onnxruntime", built["fp32"].files[0]).run({name: val["x"]})[0]
    assert np.abs(fp32 - reference).max() < 1e-5  # offline optimization must not change results
    assert weight_bytes(onnx.load(str(built["int8"].files[0]))) <= 0.3 * weight_bytes(
        onnx.load(str(built["fp32"].files[0]))
    )


def test_percentile_and_entropy_calibration_build(digits_dir, tmp_path):
    prepared, name = _prepared(digits_dir / "edge.onnx", tmp_path)
    calib, val = np.load(digits_dir / "calib.npz"), np.load(digits_dir / "val.npz")
    builder = get_builder("onnxruntime")
    recipe = builder.recipes(_profile())[-1]
    reference = load_session("onnxruntime", prepared).run({name: val["x"]})[0]
    for method in ("percentile", "entropy"):
        ctx = BuildContext(
            model_path=prepared, calib={name: calib["x"]}, out_dir=tmp_path / method, calibration_method=method
        )
        variant = builder.build(recipe, ctx)
        assert any(method in note for note in variant.notes)
        out = load_session("onnxruntime", variant.files[0]).run({name: val["x"]})[0]
        assert _top1(out, reference) >= 0.97


# --- the OCR orientation classifier: opset 11, a real MobileNet-style CNN ---------------


@pytest.mark.slow
def test_ocr_classifier_int8_loads_shrinks_and_agrees(ocr_cls_model, tmp_path, record_property):
    from make_data import make_cls_data

    assert onnx.load(str(ocr_cls_model)).opset_import[0].version == 11
    prepared, name = _prepared(ocr_cls_model, tmp_path)
    x_calib, _ = make_cls_data(32, seed=1)
    x_val, _ = make_cls_data(48, seed=2)
    builder = get_builder("onnxruntime")
    ctx = BuildContext(model_path=prepared, calib={name: x_calib}, out_dir=tmp_path / "out")
    recipes = {r.precision: r for r in builder.recipes(_profile(precisions=("fp32", "int8")))}
    fp32, int8 = builder.build(recipes["fp32"], ctx), builder.build(recipes["int8"], ctx)
    ratio = weight_bytes(onnx.load(str(int8.files[0]))) / weight_bytes(onnx.load(str(fp32.files[0])))
    record_property("ocr_cls_int8_weight_ratio", ratio)
    assert ratio <= 0.3, f"INT8 weights are {ratio:.3f}x FP32"
    reference = load_session("onnxruntime", prepared).run({name: x_val})[0]
    out = load_session("onnxruntime", int8.files[0]).run({name: x_val})[0]
    assert _top1(out, reference) >= 0.95
    ops = {n.op_type for n in onnx.load(str(int8.files[0])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


# --- errors become skipped variants with reasons ----------------------------------------


def _tiny_model(path: Path, *, with_matmul: bool = True, custom_op: bool = False) -> Path:
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if with_matmul:
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"))
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["h"]))
    else:
        nodes.append(helper.make_node("Relu", ["x"], ["h"]))
    nodes.append(
        helper.make_node("Frobnicate", ["h"], ["y"], domain="com.example")
        if custom_op
        else helper.make_node("Softmax", ["h"], ["y"], axis=-1)
    )
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if custom_op else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def _ctx(model: Path, calib: dict, out: Path, method: str = "minmax") -> BuildContext:
    return BuildContext(model_path=model, calib=calib, out_dir=out, calibration_method=method)


@pytest.mark.parametrize(
    "calib, message",
    [
        ({"wrong": np.zeros((4, 4), np.float32)}, "lacks input(s) 'x'"),
        ({"x": np.zeros((4, 5), np.float32)}, "has shape [4, 5]"),
        ({"x": np.zeros((4, 4), np.int64)}, "needs float samples"),
        ({"x": np.full((4, 4), np.nan, np.float32)}, "NaN"),
        ({"x": np.zeros((0, 4), np.float32)}, "no samples"),
    ],
)
def test_bad_calibration_data_skips_int8_with_a_reason(tmp_path, calib, message):
    model = _tiny_model(tmp_path / "tiny.onnx")
    recipe = get_builder("onnxruntime").recipes(_profile())[-1]
    with pytest.raises(VariantSkipped) as info:
        get_builder("onnxruntime").build(recipe, _ctx(model, calib, tmp_path / "out"))
    assert message in info.value.reason


def test_unknown_calibration_method_is_named(tmp_path):
    model = _tiny_model(tmp_path / "tiny.onnx")
    recipe = get_builder("onnxruntime").recipes(_profile())[-1]
    with pytest.raises(VariantSkipped, match="unknown calibration method 'kl'"):
        get_builder("onnxruntime").build(recipe, _ctx(model, {"x": np.ones((4, 4), np.float32)}, tmp_path, "kl"))


def test_model_without_weights_to_quantize_skips_int8(tmp_path):
    model = _tiny_model(tmp_path / "relu.onnx", with_matmul=False)
    recipe = get_builder("onnxruntime").recipes(_profile())[-1]
    with pytest.raises(VariantSkipped, match="INT8 would equal FP32"):
        get_builder("onnxruntime").build(recipe, _ctx(model, {"x": np.ones((4, 4), np.float32)}, tmp_path / "out"))


def test_op_onnxruntime_cannot_run_skips_every_precision(tmp_path):
    model = _tiny_model(tmp_path / "custom.onnx", custom_op=True)
    builder = get_builder("onnxruntime")
    for recipe in builder.recipes(_profile(precisions=ALL)):
        with pytest.raises(VariantSkipped) as info:
            builder.build(recipe, _ctx(model, {"x": np.ones((4, 4), np.float32)}, tmp_path / "out"))
        assert "Frobnicate" in info.value.reason or "com.example" in info.value.reason, info.value.reason


# --- calibration batching (pure) ---------------------------------------------------------


def test_calibration_batches_respect_a_fixed_batch_dimension():
    from tandem.model_compiler.variants.calibration import iter_batches

    calib = {"x": np.arange(24, dtype=np.float32).reshape(6, 4)}
    fixed1 = list(iter_batches(calib, {"x": [1, 4]}))
    assert len(fixed1) == 6 and all(b["x"].shape == (1, 4) for b in fixed1)
    fixed4 = list(iter_batches(calib, {"x": [4, 4]}))
    assert [b["x"].shape for b in fixed4] == [(4, 4)]  # a partial batch cannot be fed
    few = list(iter_batches({"x": calib["x"][:2]}, {"x": [4, 4]}))
    assert [b["x"].shape for b in few] == [(4, 4)]  # too few samples: repeated to fill one batch
    dynamic = list(iter_batches({"x": np.zeros((19, 4), np.float32)}, {"x": [-1, 4]}, max_batch=8))
    assert [len(b["x"]) for b in dynamic] == [8, 8, 3]


def test_int8_of_a_fixed_batch_model_calibrates_in_that_batch(tmp_path):
    rng = np.random.default_rng(1)
    w = onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((10, 4)).astype(np.float32)
    recipe = get_builder("onnxruntime").recipes(_profile())[-1]
    variant = get_builder("onnxruntime").build(recipe, _ctx(path, {"x": x}, tmp_path / "out"))
    out = load_session("onnxruntime", variant.files[0]).run({"x": x[:1]})[0]
    np.testing.assert_allclose(out, x[:1] @ onnx.numpy_helper.to_array(w), atol=0.1)


def test_tensorrt_profiles_get_signed_symmetric_int8(tmp_path):
    """TensorRT imports QDQ INT8 only signed with zero point 0: a profile whose ONNX Runtime target lists the
    TensorRT provider gets S8S8 with symmetric activations (U8 activations would leave those nodes to CUDA or the
    CPU), while the same ISA without TensorRT keeps the CPU's guidance."""
    builder = get_builder("onnxruntime")
    recipe = builder.recipes(get_profile("gpu-cuda"))[-1]
    assert recipe.id == "onnxruntime-int8-s8s8-sym"
    assert recipe.options["activation_type"] == "int8" and recipe.options["activation_symmetric"] is True
    cpu_arm = builder.recipes(get_profile("cpu-arm"))[-1]
    assert cpu_arm.options["activation_symmetric"] is False
    model = _tiny_model(tmp_path / "tiny.onnx")
    calib = {"x": np.random.default_rng(1).uniform(0.5, 3.0, (16, 4)).astype(np.float32)}  # all positive: an
    # asymmetric range would put the zero point far from 0
    built = builder.build(recipe, _ctx(model, calib, tmp_path / "out"))
    graph = onnx.load(str(built.files[0])).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    activation_zero_points = [
        inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) == 3
    ]
    assert activation_zero_points, "no activation was quantized"
    for zp in activation_zero_points:
        assert zp.dtype == np.int8 and not zp.any()
