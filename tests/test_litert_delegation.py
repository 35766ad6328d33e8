"""What keeps ops out of XNNPACK (LiteRT's CPU delegate): every op it refuses runs in TFLite's
reference kernels and cuts the delegated graph in two. PP-OCRv4 det had 8 partitions in INT8 (an
8x nearest upsample as 8-input CONCATENATIONs, which XNNPACK takes only up to 5; and ADDs of tiny
constants whose int8 scale was under 2^-10 of the output's) and 3 in FP32; it now has one."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dependencies import require_module
from tandem.model_compiler.litert import lower, write
from tandem.model_compiler.litert.calibrate import collect_ranges
from tandem.model_compiler.litert.quantize import quantize

require_module("ai_edge_litert")


def _outside_delegate(model_bytes: bytes) -> tuple[int, list[str]]:
    """(delegated partitions, kinds of the ops left to TFLite's own kernels): each DELEGATE node
    covers the ops between its inputs and its outputs."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes, num_threads=1)
    it.allocate_tensors()
    ops = it._get_ops_details()
    plain = [o for o in ops if o["op_name"] != "DELEGATE"]
    producer = {t: k for k, o in enumerate(plain) for t in o["outputs"]}
    inside: set[int] = set()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    for d in delegates:
        stop, todo = set(d["inputs"]), list(d["outputs"])
        while todo:
            t = todo.pop()
            if t in stop or t not in producer or producer[t] in inside:
                continue
            inside.add(producer[t])
            todo += list(plain[producer[t]]["inputs"])
    return len(delegates), [o["op_name"] for k, o in enumerate(plain) if k not in inside]


def _model(nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _int8(model: onnx.ModelProto, x: np.ndarray) -> bytes:
    lowered = lower(model, for_int8=True)
    ranges = collect_ranges(write(lowered.graph), lowered.graph, {"x": x}, lowered.input_names)
    return write(quantize(lowered.graph, ranges))


def _run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes, num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_nearest_upsample_by_8_stays_in_one_delegated_partition_and_repeats_pixels():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 8, 8], np.float32), "scales")
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node(
                "Resize",
                ["c", "", "scales"],
                ["y"],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            ),
        ],
        [w, scales],
        [1, 3, 3, 2],
        [1, 4, 24, 16],
    )
    x = rng.standard_normal((1, 3, 3, 2)).astype(np.float32)
    fp32 = write(lower(model).graph)
    assert _outside_delegate(fp32) == (1, [])
    conv = np.einsum("oc,nchw->nohw", numpy_helper.to_array(w)[:, :, 0, 0], x)
    np.testing.assert_allclose(_run(fp32, x), conv.repeat(8, axis=2).repeat(8, axis=3), rtol=1e-5, atol=1e-6)
    calib = rng.standard_normal((8, 3, 3, 2)).astype(np.float32)
    assert _outside_delegate(_int8(model, calib)) == (1, [])


def test_int8_add_of_a_tiny_constant_is_delegated_and_stays_as_close_as_int8_gets():
    """Conv and Relu reaching about 30, then + 0.0075 (PP-OCRv4 det's hardswish offsets are that small)."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((8, 4, 1, 1)) * 4).astype(np.float32), "w")
    tiny = numpy_helper.from_array(np.array([0.0075], np.float32), "tiny")
    model = _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Add", ["r", "tiny"], ["y"]),
        ],
        [w, tiny],
        [1, 4, 6, 6],
        [1, 8, 6, 6],
    )
    calib = rng.standard_normal((16, 4, 6, 6)).astype(np.float32)
    int8 = _int8(model, calib)
    assert _outside_delegate(int8) == (1, [])
    float_model = write(lower(model).graph)
    ref = np.stack([_run(float_model, calib[k : k + 1]) for k in range(len(calib))])
    got = np.stack([_run(int8, calib[k : k + 1]) for k in range(len(calib))])
    step = (ref.max() - ref.min()) / 255  # the output's int8 step over the calibration range
    # conv output, then the ADD's output, each rounded once, plus int8 weights on values up to ~45
    assert np.abs(got - ref).max() < 4 * step
