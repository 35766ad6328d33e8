"""ONNX Runtime INT8 with CHAIN_OPTIONS quantizes the Add/Mul chains between convolutions and keeps
output activations float (issue 20, "INT8 that pays"): with only Conv/MatMul quantized, every
HardSwish between two convs (x * Clip(x + 3, 0, 6) / 6, as PP-OCR exports it) runs in float between
a DequantizeLinear and a QuantizeLinear (~50% of PP-OCRv4 det's INT8 time). Since the conv affine
fold (ort_fold.py) they keep det's mask IoU gate; the default recipe quantizes them on x86-64 with
VNNI only, with the sensitivity search guarding the gate (test_ort_int8_float_search.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tandem.hardware_profiles import get_profile
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.variants import BuildContext, get_builder
from tandem.model_compiler.variants.onnxruntime import CHAIN_OPTIONS, div_to_mul, output_nodes


def _hardswish_model(path, rng: np.random.Generator) -> None:
    """Conv -> HardSwish as x * Clip(x + 3, 0, 6) / 6 -> Conv -> Softmax over channels."""
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(np.array(3.0, np.float32), "three"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "three"], ["a"], name="add3"),
        helper.make_node("Clip", ["a", "zero", "six"], ["clip"], name="clip"),
        helper.make_node("Mul", ["c1", "clip"], ["m"], name="mul"),
        helper.make_node("Div", ["m", "six"], ["hs"], name="div6"),
        helper.make_node("Conv", ["hs", "w2"], ["c2"], name="conv2"),
        helper.make_node("Softmax", ["c2"], ["y"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "hardswish",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 4, 8, 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_div_by_a_constant_becomes_a_mul_with_the_same_answers(tmp_path):
    rng = np.random.default_rng(0)
    src, dst = tmp_path / "m.onnx", tmp_path / "rewritten.onnx"
    _hardswish_model(src, rng)
    dst.write_bytes(src.read_bytes())
    assert div_to_mul(dst) == 1
    assert "Div" not in {n.op_type for n in onnx.load(str(dst)).graph.node}
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = load_session("onnxruntime", src).run({"x": x})[0]
    got = load_session("onnxruntime", dst).run({"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert output_nodes(dst) == ["softmax"]  # the Softmax, not a weight op


def test_int8_runs_the_hardswish_chain_in_integers_and_the_softmax_in_float(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "m.onnx"
    _hardswish_model(src, rng)
    calib = {"x": rng.standard_normal((16, 3, 8, 8)).astype(np.float32)}
    builder = get_builder("onnxruntime")
    vnni = dataclasses.replace(get_profile("cpu-x86"), cpu_features=("avx2", "avx512_vnni"))
    plain = next(r for r in builder.recipes(vnni) if r.precision == "int8")
    base = {k: v for k, v in plain.options.items() if k != "float_search"}  # CHAIN_OPTIONS alone
    recipe = dataclasses.replace(plain, id=f"{plain.id}-x", options={**base, **CHAIN_OPTIONS})
    built = builder.build(recipe, BuildContext(model_path=src, calib=calib, out_dir=tmp_path / "out"))
    model = onnx.load(str(built.files[0]))
    producer = {o: n for n in model.graph.node for o in n.output}
    ops = [n.op_type for n in model.graph.node]
    assert "Div" not in ops  # became a Mul ORT quantizes
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n.op_type)
    chain = [n for n in model.graph.node if n.op_type in ("Add", "Mul")]
    assert len(chain) == 3  # x + 3, x * clip, * (1/6)
    for n in chain:  # integer in, integer out: ORT fuses each into QLinearAdd/QLinearMul
        assert all(producer[i].op_type == "DequantizeLinear" for i in n.input), (n.name, list(n.input))
        assert consumers[n.output[0]] == ["QuantizeLinear"], (n.name, consumers[n.output[0]])
    assert producer["y"].op_type == "Softmax"  # the output itself is not re-quantized
    assert any("kept float" in note and "softmax" in note for note in built.notes), built.notes
    x = calib["x"][:4]
    want = load_session("onnxruntime", src).run({"x": x})[0]
    got = load_session("onnxruntime", built.files[0]).run({"x": x})[0]
    assert np.abs(got - want).max() < 0.05
    assert (got.argmax(axis=1) == want.argmax(axis=1)).mean() > 0.9


def test_default_recipes_quantize_the_chains_with_their_search_only_with_vnni():
    builder = get_builder("onnxruntime")
    vnni = dataclasses.replace(get_profile("cpu-x86"), cpu_features=("avx2", "avx_vnni"))
    (plain,) = [r for r in builder.recipes(get_profile("cpu-x86")) if r.precision == "int8"]
    assert plain.id == "onnxruntime-int8-u8s8-rr"
    assert plain.options["op_types"] == ["Conv", "MatMul", "Gemm"] and "div_to_mul" not in plain.options
    (chains,) = [r for r in builder.recipes(vnni) if r.precision == "int8"]
    assert chains.id == "onnxruntime-int8-u8s8-chains"
    assert chains.options["op_types"] == "all" and chains.options["float_search"]["share"] == 0.25
    (arm,) = [r for r in builder.recipes(get_profile("cpu-arm")) if r.precision == "int8"]
    assert arm.options["op_types"] == ["Conv", "MatMul", "Gemm"]
