"""OpenVINO's converter, on a model it cannot convert, sets the root logger to ERROR and adds a stderr handler
for the whole process: after compiling one scikit-learn classifier every later warning of ours was dropped
(test_trace_otlp_close's warning went missing after test_sklearn_models in the full suite)."""

from __future__ import annotations

import logging

import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("openvino")

from tandem.model_compiler.errors import VariantSkipped  # noqa: E402
from tandem.model_compiler.ml_operators import _openvino_cannot  # noqa: E402
from tandem.model_compiler.variants.openvino import _convert  # noqa: E402


def _linear_classifier(path) -> None:
    node = helper.make_node(
        "LinearClassifier",
        ["x"],
        ["label", "scores"],
        domain="ai.onnx.ml",
        coefficients=[0.5, -0.5, 1.0, 0.25, -1.0, 0.75],
        intercepts=[0.1, -0.1],
        classlabels_ints=[0, 1],
    )
    graph = helper.make_graph(
        [node],
        "lc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_failed_openvino_conversion_leaves_the_root_logger_as_it_was(tmp_path):
    path = tmp_path / "lc.onnx"
    _linear_classifier(path)
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    assert _openvino_cannot(path, ["LinearClassifier"]) == ["LinearClassifier"]
    assert (root.level, list(root.handlers)) == before
    with pytest.raises(VariantSkipped, match="OpenVINO cannot convert"):
        _convert(path)
    assert (root.level, list(root.handlers)) == before
