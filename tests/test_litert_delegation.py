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


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _deconv_model(kernel: int, stride: int) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((3, 4, kernel, kernel)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    size = (5 - 1) * stride + kernel
    return _model(
        [
            helper.make_node(
                "ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[kernel, kernel], strides=[stride] * 2
            )
        ],
        [w, b],
        [1, 3, 5, 5],
        [1, 4, size, size],
    )


def test_transposed_conv_with_kernel_equal_to_stride_runs_as_1x1_conv_and_depth_to_space():
    """PP-OCRv4 det's 2x2/2 heads: XNNPACK's int8 deconvolution took 7x the FP32 time there."""
    model = _deconv_model(2, 2)
    lowered = lower(model)
    kinds = [op.kind for op in lowered.graph.ops]
    assert "TRANSPOSE_CONV" not in kinds and {"CONV_2D", "DEPTH_TO_SPACE"} <= set(kinds), kinds
    x = np.random.default_rng(3).standard_normal((1, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(write(lowered.graph), x), _ort(model, x), rtol=1e-5, atol=1e-5)
    calib = np.random.default_rng(4).standard_normal((8, 3, 5, 5)).astype(np.float32)
    int8 = _int8(model, calib)
    assert _outside_delegate(int8) == (1, [])
    ref = _ort(model, calib[:1])
    assert np.abs(_run(int8, calib[:1]) - ref).max() < 4 * (ref.max() - ref.min()) / 255


def test_transposed_conv_whose_blocks_overlap_stays_transpose_conv():
    model = _deconv_model(3, 2)
    assert "TRANSPOSE_CONV" in [op.kind for op in lower(model).graph.ops]
    x = np.random.default_rng(3).standard_normal((1, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(write(lower(model).graph), x), _ort(model, x), rtol=1e-5, atol=1e-5)


def _squeeze_excitation_model() -> onnx.ModelProto:
    """x * HardSigmoid(Conv(GlobalAveragePool(x))), as PP-OCR's blocks write it (alpha 0.2, beta 0.5)."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array((rng.standard_normal((6, 6, 1, 1)) * 2).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")
    return _model(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["m"]),
            helper.make_node("Conv", ["m", "w", "b"], ["z"]),
            helper.make_node("HardSigmoid", ["z"], ["g"], alpha=0.2, beta=0.5),
            helper.make_node("Mul", ["x", "g"], ["y"]),
        ],
        [w, b],
        [1, 6, 4, 4],
        [1, 6, 4, 4],
    )


def test_squeeze_excitation_gate_folds_into_its_conv_and_int8_drops_the_sixth():
    model = _squeeze_excitation_model()
    lowered = lower(model, for_int8=True)
    kinds = [op.kind for op in lowered.graph.ops]
    assert kinds.count("MUL") == 2 and "ADD" not in kinds, kinds  # relu6 fused; /6 and x * gate left
    gate_conv = next(op for op in lowered.graph.ops if op.kind == "CONV_2D")
    assert gate_conv.options["activation"] == "RELU6"
    x = np.random.default_rng(6).standard_normal((1, 6, 4, 4)).astype(np.float32) * 2
    np.testing.assert_allclose(_run(write(lowered.graph), x), _ort(model, x), rtol=1e-5, atol=1e-5)
    calib = np.random.default_rng(7).standard_normal((16, 6, 4, 4)).astype(np.float32) * 2
    ranges = collect_ranges(write(lowered.graph), lowered.graph, {"x": calib}, lowered.input_names)
    q = quantize(lowered.graph, ranges)
    assert [op.kind for op in q.ops].count("MUL") == 1  # only x * gate
    conv = next(op for op in q.ops if op.kind == "CONV_2D")
    gate_q = q.tensors[conv.outputs[0]].quant
    assert gate_q is not None and gate_q.zero_point[0] == -128 and abs(gate_q.scale[0] * 255 - 1.0) < 1e-6
    int8 = write(q)
    assert _outside_delegate(int8) == (1, [])
    ref = np.concatenate([_ort(model, calib[k : k + 1]) for k in range(4)])
    got = np.concatenate([_run(int8, calib[k : k + 1]) for k in range(4)])
    assert np.abs(got - ref).max() < 4 * (ref.max() - ref.min()) / 255
