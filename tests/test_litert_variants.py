"""LiteRT variants end to end: digits MLPs and the PP-OCR orientation classifier lowered
from ONNX by our converter, run under the LiteRT interpreter, compared with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dependencies import require_module
from tandem.hardware_profiles import get_profile
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.errors import UnsupportedOpError, VariantSkipped
from tandem.model_compiler.model_io import load_model, prepare_model
from tandem.model_compiler.variants import BuildContext, get_builder

require_module("ai_edge_litert")


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return load_session("onnxruntime", path, graph_optimization=False).run(feeds)[0]


def _build(model: Path, calib: dict[str, np.ndarray], out: Path, recipe_id: str):
    builder = get_builder("litert")
    recipe = next(r for r in builder.recipes(get_profile("npu-litert")) if r.id == recipe_id)
    return builder.build(recipe, BuildContext(model_path=model, calib=calib, out_dir=out))


@pytest.fixture(scope="module")
def digits_variants(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("litert-digits")
    calib = {"input": np.load(digits_dir / "calib.npz")["x"]}
    built = {}
    for name in ("edge", "cloud"):
        for recipe_id in ("litert-fp32", "litert-int8"):
            built[name, recipe_id] = _build(digits_dir / f"{name}.onnx", calib, out / name, recipe_id)
    return built


@pytest.mark.parametrize("name", ["edge", "cloud"])
def test_digits_fp32_matches_onnxruntime_within_1e4(digits_dir, digits_variants, name):
    x = np.load(digits_dir / "test.npz")["x"]
    built = digits_variants[name, "litert-fp32"]
    session = load_session("litert", built.files[0], **built.session_options)
    got = session.run({"input": x})[0]  # batch of 270 on a batch-1 model: run sample by sample
    ref = _ort(digits_dir / f"{name}.onnx", {"input": x})
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) < 1e-4


@pytest.mark.parametrize("name", ["edge", "cloud"])
def test_digits_int8_agrees_with_fp32_on_98_percent_of_test_split(digits_dir, digits_variants, name):
    x = np.load(digits_dir / "test.npz")["x"]
    fp32 = load_session("litert", digits_variants[name, "litert-fp32"].files[0]).run({"input": x})[0]
    int8_file = digits_variants[name, "litert-int8"].files[0]
    got = load_session("litert", int8_file).run({"input": x})[0]
    agreement = float((got.argmax(1) == fp32.argmax(1)).mean())
    assert agreement >= 0.98, agreement
    assert got.dtype == np.float32 and np.allclose(got.sum(1), 1.0, atol=0.05)  # still probabilities
    ratio = int8_file.stat().st_size / digits_variants[name, "litert-fp32"].files[0].stat().st_size
    assert ratio < (0.35 if name == "cloud" else 0.6), ratio  # int8 weights; the small edge MLP is mostly metadata


def test_int8_model_is_full_integer_inside(digits_variants):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(digits_variants["cloud", "litert-int8"].files[0]))
    # by index: only the graph's inputs and outputs keep their names in the file (writer.write)
    types = {d["index"]: np.dtype(d["dtype"]).name for d in it.get_tensor_details()}
    io = {d["index"] for d in it.get_input_details() + it.get_output_details()}
    inner = {index: t for index, t in types.items() if index not in io}
    assert len(inner) > 10 and set(inner.values()) <= {"int8", "int32"}, inner  # int8 inside; biases/shapes int32
    assert {types[index] for index in io} == {"float32"}  # float I/O with QUANTIZE/DEQUANTIZE inside


@pytest.fixture(scope="module")
def ocr_cls(ocr_cls_model, tmp_path_factory):
    from make_data import make_cls_data

    out = tmp_path_factory.mktemp("litert-ocr")
    prepared = out / "cls.prepared.onnx"
    prepare_model(load_model(ocr_cls_model), prepared)
    calib_x, _ = make_cls_data(24, seed=1)
    val_x, val_y = make_cls_data(40, seed=2)
    return prepared, {"x": calib_x}, val_x, val_y, out


def test_ocr_classifier_fp32_and_int8_lower_and_run(ocr_cls):
    prepared, calib, val_x, _, out = ocr_cls
    ref = _ort(prepared, {"x": val_x})
    fp32 = _build(prepared, calib, out, "litert-fp32")
    assert any("x=[1, 3, 48, 192]" in note for note in fp32.notes)  # dynamic H, W fixed from calibration data
    got = load_session("litert", fp32.files[0]).run({"x": val_x})[0]
    assert float(np.abs(got - ref).max()) < 1e-4  # measured ~1e-7
    assert (got.argmax(1) == ref.argmax(1)).all()

    int8 = _build(prepared, calib, out, "litert-int8")
    q = load_session("litert", int8.files[0]).run({"x": val_x})[0]
    assert q.shape == ref.shape
    assert float((q.argmax(1) == ref.argmax(1)).mean()) >= 0.9
    assert int8.files[0].stat().st_size < 0.6 * fp32.files[0].stat().st_size


def test_int8_only_io_profile_gets_int8_io_that_the_session_quantizes(digits_dir, tmp_path):
    import dataclasses

    profile = get_profile("npu-litert")
    profile = dataclasses.replace(profile, constraints=dataclasses.replace(profile.constraints, int8_only_io=True))
    builder = get_builder("litert")
    recipe = next(r for r in builder.recipes(profile) if r.precision == "int8")
    assert recipe.id == "litert-int8-int8io" and recipe.options["io"] == "int8"
    calib = {"input": np.load(digits_dir / "calib.npz")["x"]}
    built = builder.build(recipe, BuildContext(model_path=digits_dir / "edge.onnx", calib=calib, out_dir=tmp_path))
    raw = load_session("litert", built.files[0], float_io=False)
    assert raw.inputs[0].dtype == "int8" and raw.outputs[0].dtype == "int8"
    x = np.load(digits_dir / "test.npz")["x"][:50]
    scale, zero = raw.quantization["input"]
    q_in = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    q_out = raw.run({"input": q_in})[0]
    floats = load_session("litert", built.files[0]).run({"input": x})[0]  # float_io: same model, float feeds
    o_scale, o_zero = raw.quantization["probabilities"]
    assert np.allclose((q_out.astype(np.float32) - o_zero) * o_scale, floats)
    ref = _ort(digits_dir / "edge.onnx", {"input": x})
    assert float((floats.argmax(1) == ref.argmax(1)).mean()) >= 0.96


def test_recipes_follow_the_profile():
    builder = get_builder("litert")
    assert [r.id for r in builder.recipes(get_profile("npu-litert"))] == ["litert-fp32", "litert-int8"]
    assert [r.id for r in builder.recipes(get_profile("cpu-arm"))] == ["litert-fp32", "litert-int8"]
    assert builder.recipes(get_profile("cpu-x86")) == []


def _model_with(op_node, extra_inputs=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"), op_node]
    graph = helper.make_graph(nodes, "g", [x], [y], [w, *extra_inputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])


def test_unsupported_op_skips_the_variant_naming_op_and_node(tmp_path):
    model = _model_with(helper.make_node("Erf", ["h"], ["y"], name="the_erf"))
    path = tmp_path / "erf.onnx"
    onnx.save(model, path)
    calib = {"x": np.ones((4, 4), np.float32)}
    with pytest.raises(VariantSkipped) as info:
        _build(path, calib, tmp_path / "out", "litert-fp32")
    assert "Erf" in info.value.reason and "the_erf" in info.value.reason
    assert isinstance(info.value.__cause__, UnsupportedOpError) and info.value.__cause__.op_type == "Erf"


def test_made_up_op_from_another_domain_is_named(tmp_path):
    model = _model_with(helper.make_node("FancyGlu", ["h"], ["y"], name="glu1", domain="custom.ops"))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(VariantSkipped, match="FancyGlu.*glu1"):
        _build(path, {"x": np.ones((2, 4), np.float32)}, tmp_path / "out", "litert-fp32")


def test_lstm_is_reported_as_unsupported():
    from tandem.model_compiler.litert import lower

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [
        helper.make_tensor("W", TensorProto.FLOAT, [1, 8, 3], np.zeros(24, np.float32)),
        helper.make_tensor("R", TensorProto.FLOAT, [1, 8, 2], np.zeros(16, np.float32)),
    ]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2, name="rnn")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    with pytest.raises(UnsupportedOpError) as info:
        lower(model)
    assert info.value.op_type == "LSTM" and "rnn" in str(info.value) and info.value.runtime == "litert"


def test_ocr_detector_lowers_with_resize_and_transposed_conv(ocr_det_model, tmp_path):
    """PP-OCRv4 det: nearest Resize, ConvTranspose and Conv->Mul->Add affine layers, at 160x160."""
    from make_data import make_det_data

    prepared = tmp_path / "det.prepared.onnx"
    prepare_model(load_model(ocr_det_model), prepared)
    calib = {"x": make_det_data(6, seed=1, size=160)}
    val = make_det_data(3, seed=2, size=160)
    ref = _ort(prepared, {"x": val})
    fp32 = _build(prepared, calib, tmp_path, "litert-fp32")
    got = load_session("litert", fp32.files[0]).run({"x": val})[0]
    assert got.shape == ref.shape == (3, 1, 160, 160)
    assert float(np.abs(got - ref).max()) < 1e-3  # sigmoid probability map; measured ~1e-4 at 320x320
    int8 = _build(prepared, calib, tmp_path, "litert-int8")
    q = load_session("litert", int8.files[0]).run({"x": val})[0]
    text_ref, text_q = ref > 0.3, q > 0.3
    iou = (text_ref & text_q).sum() / max((text_ref | text_q).sum(), 1)
    assert iou > 0.8, iou  # measured 0.95 at 320x320 with 16 calibration pages


def test_ocr_recognizer_lowers_in_fp32_and_int8(tmp_path):
    """PP-OCRv4 rec (SVTR neck: LayerNorm written out, attention MatMuls) at 48x320."""
    spec_dir = Path(__import__("rapidocr_onnxruntime").__file__).parent / "models"
    prepared = tmp_path / "rec.prepared.onnx"
    prepare_model(load_model(spec_dir / "ch_PP-OCRv4_rec_infer.onnx"), prepared)
    rng = np.random.default_rng(5)
    calib = {"x": rng.uniform(-1, 1, (2, 3, 48, 320)).astype(np.float32)}
    x = rng.uniform(-1, 1, (2, 3, 48, 320)).astype(np.float32)
    fp32 = _build(prepared, calib, tmp_path, "litert-fp32")
    got = load_session("litert", fp32.files[0]).run({"x": x})[0]
    ref = _ort(prepared, {"x": x})
    assert got.shape == ref.shape and float(np.abs(got - ref).max()) < 1e-4  # measured ~6e-6
    int8 = _build(prepared, calib, tmp_path, "litert-int8")  # LayerNorm's x / Sqrt(v) became x * RSQRT(v)
    q = load_session("litert", int8.files[0]).run({"x": x})[0]
    assert q.shape == ref.shape and np.isfinite(q).all()
    assert int8.files[0].stat().st_size < 0.35 * fp32.files[0].stat().st_size


def test_int8_skips_a_model_whose_op_has_no_int8_kernel_naming_it(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sqrt", ["r"], ["y"], name="root")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    path = tmp_path / "sqrt.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    calib = {"x": np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)}
    assert _build(path, calib, tmp_path, "litert-fp32").files[0].is_file()
    with pytest.raises(VariantSkipped, match="no int8 SQRT kernel.*'root'"):
        _build(path, calib, tmp_path, "litert-int8")
