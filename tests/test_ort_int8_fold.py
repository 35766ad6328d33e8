"""Constant scales and shifts after a Conv are folded into it before ONNX Runtime's FP32 and INT8
variants are written (ort_fold.py; issue 20): PP-OCRv4 exports `Mul(scale, Conv(x))` with the
constant first, which ORT's own fusion skips, and in INT8 the unfolded affine re-rounds every such
tensor (the mask IoU the chains recipe lost)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tandem.hardware_profiles import get_profile
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.variants import BuildContext, get_builder
from tandem.model_compiler.variants.ort_fold import fold_conv_affine


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    """conv1 -> Mul(scale, .) [constant first] -> Add(., [C,1,1]) -> Relu -> conv2 -> Mul(., 2) and + conv2
    (conv2's output is read twice: its Mul must stay)."""
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1"),
        numpy_helper.from_array(np.array([1.9], np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "shift"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["scale", "c1"], ["scaled"], name="scale_first"),
        helper.make_node("Add", ["scaled", "shift"], ["shifted"], name="shift"),
        helper.make_node("Relu", ["shifted"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2"),
        helper.make_node("Mul", ["c2", "two"], ["doubled"], name="double"),
        helper.make_node("Add", ["doubled", "c2"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_scale_then_shift_fold_into_the_conv_and_a_shared_output_does_not(tmp_path):
    rng = np.random.default_rng(0)
    model = _model(rng)
    src, dst = tmp_path / "m.onnx", tmp_path / "folded.onnx"
    onnx.save(model, str(src))
    assert fold_conv_affine(model) == 2
    onnx.save(model, str(dst))
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Relu", "Conv", "Mul", "Add"]  # conv2's Mul stays: c2 is also read by the Add
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = load_session("onnxruntime", src, graph_optimization=False).run({"x": x})[0]
    got = load_session("onnxruntime", dst, graph_optimization=False).run({"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fp32_and_int8_variants_are_written_folded(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "m.onnx"
    onnx.save(_model(rng), str(src))
    builder = get_builder("onnxruntime")
    calib = {"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)}
    for recipe in builder.recipes(get_profile("cpu-x86")):
        if recipe.precision not in ("fp32", "int8"):
            continue
        built = builder.build(recipe, BuildContext(model_path=src, calib=calib, out_dir=tmp_path / recipe.id))
        assert any("2 constant Mul/Add after a Conv folded" in n for n in built.notes), (recipe.id, built.notes)
        names = {n.name for n in onnx.load(str(built.files[0])).graph.node}
        assert not names & {"scale_first", "shift"}, recipe.id
