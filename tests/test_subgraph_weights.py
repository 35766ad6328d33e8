"""Weights that live inside `If` branches (Silero VAD keeps every Conv in the branches of an
`If` on its sample rate): the report counts them, and ONNX Runtime INT8 is refused with the
true reason (its static quantizer does not enter subgraphs), not "no weights to quantize"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tandem.hardware_profiles import get_profile
from tandem.model_compiler import model_io
from tandem.model_compiler.errors import VariantSkipped
from tandem.model_compiler.variants import BuildContext, get_builder


def _branch(name: str, weight: np.ndarray) -> onnx.GraphProto:
    """x [N, 4] -> MatMul by a Constant-node weight -> [N, 3], as an If branch (no inputs of its own)."""
    nodes = [
        helper.make_node("Constant", [], [f"{name}_w"], value=numpy_helper.from_array(weight, f"{name}_w")),
        helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"]),
    ]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)])


def sample_rate_model(path: Path) -> Path:
    """y = x @ W16 if sr == 16000 else x @ W8: all weights inside the If, 2 x 4x3 float32 = 96 bytes."""
    rng = np.random.default_rng(0)
    w16, w8 = (rng.standard_normal((4, 3)).astype(np.float32) for _ in range(2))
    nodes = [
        helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["y"], then_branch=_branch("then", w16), else_branch=_branch("else", w8)),
    ]
    graph = helper.make_graph(
        nodes,
        "sr_if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(np.array(16000, np.int64), "sr16k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_weights_inside_if_branches_are_counted(tmp_path: Path):
    model = onnx.load(str(sample_rate_model(tmp_path / "m.onnx")))
    assert model_io.weight_bytes(model) == 2 * 4 * 3 * 4 + 8  # both branches' weights and the 16000 constant
    assert model_io.subgraph_op_count(model, ["MatMul"]) == 2


def test_onnxruntime_int8_names_the_subgraphs_instead_of_saying_there_are_no_weights(tmp_path: Path):
    path = sample_rate_model(tmp_path / "m.onnx")
    builder = get_builder("onnxruntime")
    recipe = next(r for r in builder.recipes(get_profile("cpu-x86")) if r.precision == "int8")
    calib = {"x": np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32), "sr": np.array(16000)}
    with pytest.raises(VariantSkipped, match=r"all 2 Conv/MatMul/Gemm ops .* inside If/Loop subgraphs.*does not enter"):
        builder.build(recipe, BuildContext(model_path=path, calib=calib, out_dir=tmp_path / "out"))
