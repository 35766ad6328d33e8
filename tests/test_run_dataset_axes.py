"""Validation runs samples in chunks and joins each output along its own batch axis: a state
output declared all-dynamic ([?, ?, ?], really [2, N, H], as Silero VAD's stateN) is joined on
the axis that carries the samples, not axis 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.validate import VALIDATION_CHUNK, run_dataset


def _stream_model(path: Path) -> Path:
    nodes = [
        helper.make_node("Identity", ["x"], ["p"]),
        # the reshape to a computed shape hides the state's dims from shape inference, as an If does
        helper.make_node("Add", ["state", "state"], ["doubled"]),
        helper.make_node("Shape", ["state"], ["dims"]),
        helper.make_node("Reshape", ["doubled", "dims"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stream",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "n", 4]),
        ],
        [
            helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, ["a", "b", "c"]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_all_dynamic_state_output_is_joined_along_its_sample_axis(tmp_path: Path):
    n = VALIDATION_CHUNK + 5  # two chunks of different sizes
    rng = np.random.default_rng(0)
    data = {
        "x": rng.standard_normal((n, 3)).astype(np.float32),
        "state": rng.standard_normal((2, n, 4)).astype(np.float32),
    }
    session = load_session("onnxruntime", _stream_model(tmp_path / "m.onnx"))
    p, state_n = run_dataset(session, data, {"x": 0, "state": 1})
    assert p.shape == (n, 3) and np.array_equal(p, data["x"])
    assert state_n.shape == (2, n, 4) and np.array_equal(state_n, 2 * data["state"])
