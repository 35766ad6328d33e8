"""LiteRT lowering of Split and of the rest of a YOLOv8 head (C2f blocks, the DFL softmax
over channels, anchor grids from Range/Expand/ConstantOfShape), each compared with ONNX
Runtime on the same inputs: FP32 to 1e-5, and an INT8 variant of a C2f block close to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dependencies import require_module
from tandem.hardware_profiles import get_profile
from tandem.hardware_profiles.runtimes import load_session
from tandem.model_compiler.errors import UnsupportedOpError
from tandem.model_compiler.litert import lower, write
from tandem.model_compiler.variants import BuildContext, get_builder

require_module("ai_edge_litert")


def _f32(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _i64(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.int64), name)


def _tflite(model_bytes: bytes, x: np.ndarray) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model_bytes)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def _ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _model(nodes, inits, x_shape, outputs, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, []) for name in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def c2f_block(sizes: list[int] | None, opset: int = 17) -> onnx.ModelProto:
    """Conv -> Split on channels -> Conv on the last piece -> Concat of all: YOLOv8's C2f shape."""
    rng = np.random.default_rng(7)
    pieces = [f"p{k}" for k in range(len(sizes) if sizes else 2)]
    inits = [_f32("w0", rng.standard_normal((8, 3, 3, 3)) * 0.3), _f32("w1", rng.standard_normal((4, 4, 3, 3)) * 0.3)]
    split_inputs = ["c0"]
    split_attrs: dict = {"axis": 1}
    if sizes is not None and opset >= 13:
        inits.append(_i64("sizes", sizes))
        split_inputs.append("sizes")
    elif sizes is not None:
        split_attrs["split"] = sizes
    if opset >= 18 and sizes is None:
        split_attrs["num_outputs"] = 2
    last = pieces[-1]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Split", split_inputs, pieces, **split_attrs),
        helper.make_node("Conv", [last, "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"]),
        helper.make_node("Concat", [*pieces, "s1"], ["y"], axis=1),
    ]
    return _model(nodes, inits, [1, 3, 8, 8], ["y"], opset)


@pytest.mark.parametrize(
    "sizes, opset, kinds",
    [
        ([4, 4], 17, {"SPLIT"}),  # equal pieces from the `split` input
        (None, 18, {"SPLIT"}),  # opset 18's num_outputs
        ([4, 4], 11, {"SPLIT"}),  # the opset-11 `split` attribute
        ([2, 2, 4], 17, {"STRIDED_SLICE"}),  # unequal pieces: one slice each
    ],
)
def test_split_on_channels_matches_onnxruntime_without_extra_transposes(sizes, opset, kinds):
    model = c2f_block(sizes, opset)  # the last piece (4 wide) feeds a Conv
    lowered = lower(model)
    ops = [op.kind for op in lowered.graph.ops]
    assert kinds <= set(ops)
    # NHWC from the Conv on: one transpose in, one out, none around the split
    assert ops.count("TRANSPOSE") == 2, ops
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    got, ref = _tflite(write(lowered.graph), x)[0], _ort(model, x)[0]
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) < 1e-5


def test_split_of_a_plain_tensor_with_several_outputs_read_by_the_graph():
    """A 3-D split (LSTM gates, a YOLO head's box/class cut) whose pieces are graph outputs."""
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["box", "cls"], axis=1),
        helper.make_node("Sigmoid", ["cls"], ["scores"]),
    ]
    model = _model(nodes, [_i64("sizes", [4, 3])], [1, 7, 20], ["box", "scores"], 17)
    x = np.random.default_rng(1).standard_normal((1, 7, 20)).astype(np.float32)
    got, ref = _tflite(write(lower(model).graph), x), _ort(model, x)
    assert [g.shape for g in got] == [(1, 4, 20), (1, 3, 20)]
    for g, r in zip(got, ref):
        assert float(np.abs(g - r).max()) < 1e-6


def test_split_sizes_that_do_not_cut_the_axis_are_refused_by_name():
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1, name="bad_split")]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "bad",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 7, 4])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in ("a", "b")],
            [_i64("sizes", [4, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(UnsupportedOpError, match=r"bad_split.*\[4, 4\].*7"):
        lower(model)


def dfl_head() -> onnx.ModelProto:
    """YOLOv8's box decoding: [1, 64, A] -> [1, 4, 16, A] -> transpose -> softmax over the 16 bins
    (axis 1 of a plain 4-D tensor) -> 1x1 Conv with weights 0..15; plus an anchor grid built
    from Range/Expand/ConstantOfShape, constant once the shapes are static."""
    anchors = 24
    nodes = [
        helper.make_node("Reshape", ["x", "shape4"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["t"], ["sm"], axis=1),
        helper.make_node("Conv", ["sm", "bins"], ["dist"], kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["dist", "shape3"], ["d3"]),
        helper.make_node("Range", ["zero", "count", "one"], ["grid"]),
        helper.make_node(
            "ConstantOfShape", ["grid_shape"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))
        ),
        helper.make_node("Expand", ["grid_f", "grid_shape"], ["grid_e"]),
        helper.make_node("Cast", ["grid"], ["grid_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["grid_e", "ones"], ["anchor"]),
        helper.make_node("Add", ["d3", "anchor"], ["y"]),
    ]
    # ONNX wants a topological order: Cast before Expand
    nodes = nodes[:6] + [nodes[8], nodes[6], nodes[7]] + nodes[9:]
    inits = [
        _i64("shape4", [1, 4, 16, anchors]),
        _i64("shape3", [1, 4, anchors]),
        _f32("bins", np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1)),
        _i64("zero", 0),
        _i64("count", anchors),
        _i64("one", 1),
        _i64("grid_shape", [1, 4, anchors]),
    ]
    return _model(nodes, inits, [1, 64, anchors], ["y"], 17)


def test_dfl_softmax_over_channels_and_anchor_grid_match_onnxruntime():
    model = dfl_head()
    lowered = lower(model)
    kinds = [op.kind for op in lowered.graph.ops]
    assert "SOFTMAX" in kinds and not {"RANGE", "EXPAND", "FILL"} & set(kinds)
    x = np.random.default_rng(2).standard_normal((1, 64, 24)).astype(np.float32) * 4
    got, ref = _tflite(write(lowered.graph), x)[0], _ort(model, x)[0]
    assert float(np.abs(got - ref).max()) < 1e-4


def test_int8_variant_of_a_c2f_block_stays_close_to_fp32(tmp_path: Path):
    model = c2f_block([4, 4])
    onnx.save(model, tmp_path / "c2f.onnx")
    rng = np.random.default_rng(3)
    calib = {"x": rng.standard_normal((32, 3, 8, 8)).astype(np.float32)}
    builder = get_builder("litert")
    recipe = next(r for r in builder.recipes(get_profile("npu-litert")) if r.precision == "int8")
    built = builder.build(recipe, BuildContext(model_path=tmp_path / "c2f.onnx", calib=calib, out_dir=tmp_path / "o"))
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    got = load_session("litert", built.files[0], **built.session_options).run({"x": x})[0]
    ref = np.concatenate([_ort(model, x[i : i + 1])[0] for i in range(4)])
    # int8 steps over a range of ~+-6: within a few quantization steps, and far from a wrong piece order
    assert float(np.abs(got - ref).max()) < 0.15
    assert float(np.corrcoef(got.ravel(), ref.ravel())[0, 1]) > 0.999


def yolo_output_head() -> onnx.ModelProto:
    """Boxes in pixels (a Conv scaled by 320) concatenated with sigmoid class scores, as YOLOv8's output."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "wb"], ["b"], kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["b"], ["bs"]),
        helper.make_node("Mul", ["bs", "pixels"], ["boxes"]),
        helper.make_node("Conv", ["x", "wc"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["c"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["y4"], axis=1),
        helper.make_node("Reshape", ["y4", "shape3"], ["y"]),
    ]
    inits = [
        _f32("wb", rng.standard_normal((4, 8, 1, 1))),
        _f32("wc", rng.standard_normal((3, 8, 1, 1))),
        _f32("pixels", 320.0),
        _i64("shape3", [1, 7, 36]),
    ]
    return _model(nodes, inits, [1, 8, 6, 6], ["y"], 17)


def test_int8_yolo_output_keeps_its_scores_beside_pixel_boxes(tmp_path: Path):
    """One int8 scale for boxes (0-320) and scores (0-1) left the scores two values (nudenet's
    LiteRT INT8: map50 0.32-0.50); the output concat now runs in float."""
    model = yolo_output_head()
    onnx.save(model, tmp_path / "head.onnx")
    rng = np.random.default_rng(6)
    calib = {"x": rng.standard_normal((32, 8, 6, 6)).astype(np.float32)}
    builder = get_builder("litert")
    recipe = next(r for r in builder.recipes(get_profile("npu-litert")) if r.precision == "int8")
    built = builder.build(recipe, BuildContext(model_path=tmp_path / "head.onnx", calib=calib, out_dir=tmp_path / "o"))
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    got = load_session("litert", built.files[0], **built.session_options).run({"x": x})[0]
    ref = np.concatenate([_ort(model, x[i : i + 1])[0] for i in range(2)])
    assert float(np.abs(got[:, 4:] - ref[:, 4:]).max()) < 0.03  # scores: a few 1/256 steps
    # boxes keep their own int8 scale (a logit step through sigmoid x 320 is several pixels)
    assert float(np.corrcoef(got[:, :4].ravel(), ref[:, :4].ravel())[0, 1]) > 0.99
