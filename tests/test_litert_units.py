"""Units of the LiteRT lowering and adapter: ONNX rewrites, quantization parameters,
the session's batching and int8 boundary, and clear errors when something is missing."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dependencies import require_module
from tandem.hardware_profiles.runtimes import RuntimeUnavailableError, load_session
from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.litert import LoweringError, lower, write
from tandem.model_compiler.litert.prepass import Node, fold_batchnorm, match_hardswish
from tandem.model_compiler.litert.quantize import affine

require_module("ai_edge_litert")


def _init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _paddle_hardswish_model() -> onnx.ModelProto:
    """Conv -> x * Clip(x + 3, 0, 6) / 6, the way PaddlePaddle exports hardswish (opset 11 Clip inputs)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "three"], ["a"]),
        helper.make_node("Clip", ["a", "zero", "six"], ["cl"]),
        helper.make_node("Mul", ["c", "cl"], ["m"]),
        helper.make_node("Div", ["m", "six"], ["y"]),
    ]
    inits = [_init("w", rng.standard_normal((4, 2, 3, 3))), _init("three", 3.0), _init("zero", 0.0), _init("six", 6.0)]
    graph = helper.make_graph(
        nodes,
        "hs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _tflite(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_paddle_hardswish_pattern_becomes_one_op_and_matches_onnxruntime():
    import onnxruntime as ort

    model = _paddle_hardswish_model()
    lowered = lower(model)
    assert [op.kind for op in lowered.graph.ops] == ["TRANSPOSE", "CONV_2D", "HARD_SWISH", "TRANSPOSE"]
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32) * 3
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(_tflite(write(lowered.graph), x) - ref).max() < 1e-5
    int8_lowering = [op.kind for op in lower(model, for_int8=True).graph.ops]
    assert "HARD_SWISH" not in int8_lowering and int8_lowering.count("MUL") == 2


def test_hardswish_pattern_is_left_alone_when_the_constant_is_not_3():
    consts = {"three": np.float32(2.5), "zero": np.float32(0), "six": np.float32(6)}
    nodes = [
        Node("Add", ["x", "three"], ["a"]),
        Node("Clip", ["a", "zero", "six"], ["cl"]),
        Node("Mul", ["x", "cl"], ["m"]),
        Node("Div", ["m", "six"], ["y"]),
    ]
    assert [n.op_type for n in match_hardswish(list(nodes), consts, {"y"})] == ["Add", "Clip", "Mul", "Div"]


def test_batchnorm_folds_into_conv_unless_the_conv_output_is_used_elsewhere():
    consts = {
        "w": np.ones((2, 1, 1, 1), np.float32),
        "g": np.array([2.0, 1.0]),
        "b": np.array([0.5, 0.0]),
        "m": np.array([1.0, 0.0]),
        "v": np.array([1.0, 4.0]),
    }
    conv = Node("Conv", ["x", "w"], ["c"], name="conv")
    bn = Node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], {"epsilon": 0.0})
    folded = fold_batchnorm([conv, bn], dict(consts), {"y"})
    assert [n.op_type for n in folded] == ["Conv"] and folded[0].outputs == ["y"]
    conv2 = Node("Conv", ["x", "w"], ["c"], name="conv")
    bn2 = Node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], {"epsilon": 0.0})
    kept = fold_batchnorm([conv2, bn2], dict(consts), {"y", "c"})  # c is also a graph output
    assert [n.op_type for n in kept] == ["Conv", "BatchNormalization"]


def test_folded_batchnorm_values():
    consts = {
        "w": np.full((2, 1, 1, 1), 3.0, np.float32),
        "g": np.array([2.0, 1.0]),
        "b": np.array([0.5, 0.0]),
        "m": np.array([1.0, 0.0]),
        "v": np.array([1.0, 4.0]),
    }
    conv = Node("Conv", ["x", "w"], ["c"], name="conv")
    bn = Node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], {"epsilon": 0.0})
    (node,) = fold_batchnorm([conv, bn], consts, {"y"})
    # y = (3x - mean) * gamma / sqrt(var) + beta
    assert np.allclose(consts[node.inputs[1]].ravel(), [6.0, 1.5])
    assert np.allclose(consts[node.inputs[2]], [-1.5, 0.0])


@pytest.mark.parametrize("lo,hi", [(-1.0, 3.0), (0.0, 6.0), (-5.0, -1.0), (0.0, 0.0), (2.0, 2.0)])
def test_affine_parameters_represent_zero_exactly_and_cover_the_range(lo, hi):
    q = affine(lo, hi)
    scale, zero = float(q.scale[0]), int(q.zero_point[0])
    assert -128 <= zero <= 127 and scale > 0
    assert (-128 - zero) * scale <= min(lo, 0) + 1e-6 and (127 - zero) * scale >= max(hi, 0) - scale


def test_dynamic_spatial_dims_need_static_shapes():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(LoweringError, match="input 'x' has a dynamic dimension 2"):
        lower(model)
    assert lower(model, {"x": (1, 3, 4, 5)}).graph.tensors[0].shape == (1, 3, 4, 5)


def test_builder_skips_a_dynamic_model_without_calibration_samples(tmp_path):
    from tandem.hardware_profiles import get_profile
    from tandem.model_compiler.variants import BuildContext, get_builder

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, tmp_path / "m.onnx")
    builder = get_builder("litert")
    recipe = builder.recipes(get_profile("npu-litert"))[0]
    with pytest.raises(VariantSkipped, match="dynamic dimension 2"):
        builder.build(recipe, BuildContext(model_path=tmp_path / "m.onnx", calib={}, out_dir=tmp_path / "out"))


@pytest.fixture()
def mlp_tflite(tmp_path):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1), helper.make_node("Softmax", ["h"], ["y"])]
    inits = [_init("w", rng.standard_normal((3, 5))), _init("b", rng.standard_normal(3))]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "mlp.onnx")
    path = tmp_path / "mlp.tflite"
    path.write_bytes(write(lower(model).graph))
    return path, tmp_path / "mlp.onnx"


def test_session_runs_a_batch_on_a_batch1_model_sample_by_sample(mlp_tflite):
    path, onnx_path = mlp_tflite
    session = load_session("litert", path, threads=1)
    assert session.inputs[0].name == "x" and session.inputs[0].shape == (-1, 5)
    assert session.outputs[0].name == "y" and session.outputs[0].dtype == "float32"
    x = np.random.default_rng(2).standard_normal((7, 5)).astype(np.float32)
    got = session.run({"x": x})[0]
    ref = load_session("onnxruntime", onnx_path).run({"x": x})[0]
    assert got.shape == (7, 3) and np.abs(got - ref).max() < 1e-5
    assert session._batched[7] is not None  # an FC model resizes to the batch: one invoke, not seven
    with pytest.raises(ValueError, match="missing input 'x'"):
        session.run({"a": x, "b": x})
    session.close()


def test_session_reports_missing_litert(monkeypatch, mlp_tflite):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # None makes the import fail
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(RuntimeUnavailableError, match="pip install ai-edge-litert"):
        load_session("litert", mlp_tflite[0])


def test_session_rejects_a_file_that_is_not_tflite(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(RuntimeUnavailableError, match="LiteRT cannot load"):
        load_session("litert", bad)


def test_session_falls_back_to_sample_by_sample_when_the_batch_is_baked_in(tmp_path):
    """A Reshape that folds the batch axis into others cannot be resized: each sample runs alone."""
    import onnxruntime as ort

    shape = numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "s22")
    back = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "s14")
    nodes = [
        helper.make_node("Reshape", ["x", "s22"], ["sq"]),
        helper.make_node("Transpose", ["sq"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "s14"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fold",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [shape, back],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "fold.tflite"
    path.write_bytes(write(lower(model).graph))
    x = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    session = load_session("litert", path)
    got = session.run({"x": x})[0]
    ort_session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([ort_session.run(None, {"x": x[i : i + 1]})[0] for i in range(5)])
    assert got.shape == (5, 4) and np.array_equal(got, ref)
    assert session._batched[5] is None


def test_percentile_ranges_sit_inside_minmax_ranges_and_clip_an_outlier():
    from tandem.model_compiler.litert.calibrate import collect_ranges

    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
    )
    lowered = lower(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model_bytes = write(lowered.graph)
    x = np.random.default_rng(0).uniform(-1, 1, (256, 64)).astype(np.float32)
    x[3, 7] = 1000.0  # one outlier among 16384 values: above the 99.99th percentile
    minmax = collect_ranges(model_bytes, lowered.graph, {"x": x}, ["x"])
    pct = collect_ranges(model_bytes, lowered.graph, {"x": x}, ["x"], method="percentile")
    out = lowered.graph.outputs[0]
    assert minmax[out][1] == 1000.0 and pct[out][1] < 2.0
    assert all(minmax[i][0] <= pct[i][0] <= pct[i][1] <= minmax[i][1] for i in minmax)
    with pytest.raises(Exception, match="entropy"):
        collect_ranges(model_bytes, lowered.graph, {"x": x}, ["x"], method="entropy")
