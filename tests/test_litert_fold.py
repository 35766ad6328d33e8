"""Constant folding in the LiteRT lowering: every folded value is a real numeric array.

A Pow whose inputs are both constant (an initializer squared, a shape-derived base) used to be
stored as np.asarray(None), a 0-d object array, which then broke the op that consumed it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dependencies import require_module
from tandem.model_compiler.errors import UnsupportedOpError
from tandem.model_compiler.litert import lower, write
from tandem.model_compiler.litert.fold import fold

require_module("ai_edge_litert")


def _const_pow_model(base: np.ndarray, exponent: float) -> onnx.ModelProto:
    """y = x + Pow(base, exponent), base and exponent initializers."""
    graph = helper.make_graph(
        [helper.make_node("Pow", ["base", "e"], ["p"]), helper.make_node("Add", ["x", "p"], ["y"])],
        "constpow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(base.astype(np.float32), "base"),
            numpy_helper.from_array(np.array(exponent, np.float32), "e"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_pow_folds_to_a_numeric_array_of_the_base_dtype():
    value = fold("Pow", [np.array([1.5, -2.0], np.float32), np.array(3.0, np.float32)], {})
    assert value is not None and value.dtype == np.float32
    np.testing.assert_allclose(value, [3.375, -8.0])
    ints = fold("Pow", [np.array([2, 3], np.int64), np.array(2, np.int64)], {})
    assert ints is not None and ints.dtype == np.int64 and ints.tolist() == [4, 9]


def test_a_constant_pow_is_folded_into_the_model_and_runs():
    from ai_edge_litert.interpreter import Interpreter

    base = np.array([0.5, 1.0, 2.0, 3.0], np.float32)
    lowered = lower(_const_pow_model(base, 3.0))  # exponent 3: no Pow lowering rule would take it
    consts = [t.data for t in lowered.graph.tensors if t.data is not None]
    assert all(c.dtype != object for c in consts), [c.dtype for c in consts]
    it = Interpreter(model_content=write(lowered.graph))
    it.allocate_tensors()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    np.testing.assert_allclose(it.get_tensor(it.get_output_details()[0]["index"]), x + base**3, rtol=1e-6)


def test_a_constant_op_without_a_folder_is_refused_by_name():
    from tandem.model_compiler.litert.graph import Lowering
    from tandem.model_compiler.litert.ops import constant_fold
    from tandem.model_compiler.litert.prepass import Node

    low = Lowering({"a": np.array([1.0], np.float32)})
    with pytest.raises(UnsupportedOpError, match="'weird'.*no constant folding"):
        constant_fold(low, Node("Erf", ["a"], ["b"], {}, "weird"))
