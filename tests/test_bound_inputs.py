"""Bound inputs (`tandem-compile --bind sr=16000`): a model that keeps its weights inside
`If(sr == 16000)` (as Silero VAD does) is specialized to one branch, so ONNX Runtime's quantizer
reaches the weights; the manifest lists the bound input; the agent accepts the bound value or its
absence and refuses another; a fallback sends the bound value to a hub whose model takes it, and a
hub serving the specialized variant drops it after the same check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile_fixtures import ORT_FP32, ORT_TASKS, compile_for_profile
from tandem.cloud_hub.inference import InferenceServer
from tandem.cloud_hub.inference.model import BadInputError, load_cloud_model
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.errors import BadRequestError
from tandem.model_compiler.cli import main as compile_cli
from tandem.model_compiler.errors import InvalidModelError
from tandem.model_compiler.specialize import bind_inputs, fix_shapes
from tandem.protocols.manifest import BoundInput, Manifest, ManifestError, load_manifest

SR = np.array(16000, np.int64)


def _branch(name: str, weights: np.ndarray, bias: float) -> onnx.GraphProto:
    """h = tanh(audio @ W + bias): the branch's own weights, as Silero's If branches hold theirs."""
    return helper.make_graph(
        [
            helper.make_node("MatMul", ["audio", f"{name}_W"], [f"{name}_a"]),
            helper.make_node("Add", [f"{name}_a", f"{name}_b"], [f"{name}_pre"]),
            helper.make_node("Tanh", [f"{name}_pre"], [f"{name}_h"]),
        ],
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_h", TensorProto.FLOAT, ["n", 16])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), f"{name}_W"),
            numpy_helper.from_array(np.full(16, bias, np.float32), f"{name}_b"),
        ],
    )


def rate_model(path: Path, seed: int = 0) -> Path:
    """audio [N, 64] and a 0-d int64 `sr`; every weight of the 16 kHz and 8 kHz paths sits inside
    If(sr == 16000); a sigmoid probability [N, 1] out."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Equal", ["sr", "k16000"], ["is16k"]),
        helper.make_node(
            "If",
            ["is16k"],
            ["h"],
            then_branch=_branch("hi", rng.normal(scale=0.3, size=(64, 16)), 0.1),
            else_branch=_branch("lo", rng.normal(scale=0.3, size=(64, 16)), -0.2),
        ),
        helper.make_node("MatMul", ["h", "Wo"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rate",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["n", 64]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 1])],
        initializer=[
            numpy_helper.from_array(np.array(16000, np.int64), "k16000"),
            numpy_helper.from_array(rng.normal(scale=1.5, size=(16, 1)).astype(np.float32), "Wo"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _audio(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 64)).astype(np.float32)


def _run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_binding_inlines_the_branch_the_value_takes(tmp_path):
    path = rate_model(tmp_path / "rate.onnx")
    original = onnx.load(str(path))
    x = _audio(8, 1)
    for rate, branch in ((16000, "then_branch"), (8000, "else_branch")):
        result = bind_inputs(original, {"sr": str(rate)})
        graph = result.model.graph
        assert [i.name for i in graph.input] == ["audio"]
        assert "If" not in {n.op_type for n in graph.node} and result.inlined == 1
        assert any(branch in note for note in result.notes)
        assert result.bound == [BoundInput("sr", "int64", rate)]
        expected = _run(path, {"audio": x, "sr": np.array(rate, np.int64)})
        np.testing.assert_array_equal(_run(result.model, {"audio": x}), expected)
    # the 8 kHz weights went with their branch
    names = {i.name for i in bind_inputs(original, {"sr": "16000"}).model.graph.initializer}
    assert "hi_W" in names and "lo_W" not in names


def test_binding_refuses_what_it_cannot_bind_by_name(tmp_path):
    original = onnx.load(str(rate_model(tmp_path / "rate.onnx")))
    with pytest.raises(InvalidModelError, match=r"no 0-d \(scalar\) input of that name \(its scalar inputs: sr\)"):
        bind_inputs(original, {"audio": "1"})
    with pytest.raises(InvalidModelError, match="--bind rate: the model has no 0-d"):
        bind_inputs(original, {"rate": "16000"})
    with pytest.raises(InvalidModelError, match="--bind sr=16k: not a int64 value"):
        bind_inputs(original, {"sr": "16k"})


def test_static_shapes_inline_the_ifs_they_decide(tmp_path):
    """If(Shape(audio)[1] == 64) around the weights, as Silero's LSTM branches test their input's
    shape: at a static shape the If goes (OpenVINO's static buckets; NNCF cannot compile it)."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Shape", ["audio"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["width"], axis=0),
        helper.make_node("Equal", ["width", "k64"], ["wide"]),
        helper.make_node(
            "If",
            ["wide"],
            ["output"],
            then_branch=_branch("hi", rng.normal(size=(64, 16)), 0.0),
            else_branch=_branch("lo", rng.normal(size=(64, 16)), 1.0),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "shaped",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["n", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 16])],
        initializer=[
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(64, np.int64), "k64"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fixed = fix_shapes(model, {"audio": [1, 64]})
    assert "If" not in {n.op_type for n in fixed.model.graph.node} and fixed.inlined == 1, fixed.notes
    x = _audio(1, 5)
    np.testing.assert_array_equal(_run(fixed.model, {"audio": x}), _run(model, {"audio": x}))
    assert "lo_W" not in {i.name for i in fixed.model.graph.initializer}


def test_manifest_bound_inputs_check_and_round_trip():
    bound = BoundInput("sr", "int64", 16000)
    assert bound.mismatch(SR) is None
    assert "the request sent 8000" in (bound.mismatch(np.array(8000, np.int64)) or "")
    assert "(int32)" in (bound.mismatch(np.array(16000, np.int32)) or "")  # the dtype is part of the value
    assert "shape [1]" in (bound.mismatch(np.array([16000], np.int64)) or "")
    assert BoundInput.from_dict({"name": "sr", "dtype": "int64", "value": 16000}, "b") == bound
    for bad, field in (({"name": "sr", "dtype": "int64", "value": "16000"}, "b.value"), ({"name": "sr"}, "b.dtype")):
        with pytest.raises(ManifestError, match=field):
            BoundInput.from_dict(bad, "b")


def test_a_manifest_input_cannot_also_be_bound(compiled):
    _, _, edge, _ = compiled
    data = load_manifest(edge.out).to_dict()
    data["inputs"].append({"name": "sr", "dtype": "int64", "shape": []})
    with pytest.raises(ManifestError, match=r"bound_inputs\[0\].name: 'sr' is bound, so it cannot also be an input"):
        Manifest.from_dict(data)


def test_cli_bind_needs_name_equals_value(tmp_path, capsys):
    model = rate_model(tmp_path / "rate.onnx")
    np.savez(tmp_path / "d.npz", audio=_audio(8, 1))
    args = [
        str(model),
        "--calib",
        str(tmp_path / "d.npz"),
        "--val",
        str(tmp_path / "d.npz"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert compile_cli([*args, "--bind", "sr"]) == 2
    assert "--bind 'sr': expected NAME=VALUE" in capsys.readouterr().err
    assert compile_cli([*args, "--budget", "speed=fast"]) == 2
    assert "--budget 'speed=fast': 'fast' is not a number (expected NAME=VALUE)" in capsys.readouterr().err
    assert compile_cli([*args, "--bind", "audio=1"]) == 2
    assert "--bind audio: the model has no 0-d (scalar) input of that name" in capsys.readouterr().err
    np.savez(tmp_path / "d.npz", audio=_audio(8, 1), sr=np.array(8000, np.int64))  # recorded at another rate
    assert compile_cli([*args, "--bind", "sr=16000"]) == 2
    assert "'sr' is bound to 16000" in capsys.readouterr().err


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The model compiled twice: bound to 16 kHz (FP32 and INT8) for the edge, as given for the hub."""
    tmp = tmp_path_factory.mktemp("bound")
    model = rate_model(tmp / "rate.onnx")
    np.savez(tmp / "data.npz", audio=_audio(64, 2), sr=SR)  # sr: ignored by the bound compile
    data = tmp / "data.npz"
    edge = compile_for_profile(tmp, ORT_TASKS, model, data, out=tmp / "ort-tasks", bind={"sr": "16000"})
    hub = compile_for_profile(tmp, ORT_FP32, model, data, out=tmp / "ort-fp32")
    return tmp, model, edge, hub.out


def test_compile_bind_reaches_the_weights_and_the_manifest_says_so(compiled):
    _, _, edge, _ = compiled
    manifest = load_manifest(edge.out)
    assert manifest.bound_inputs == [BoundInput("sr", "int64", 16000)]
    assert [s.name for s in manifest.inputs] == ["audio"]
    assert all([s.name for s in v.inputs] == ["audio"] for v in manifest.variants)
    # without --bind, every MatMul weight sits inside the If and ONNX Runtime INT8 is refused (7a8308a)
    int8 = next(v for v in manifest.variants if v.precision == "int8")
    assert 0 < int8.metrics["max_abs_error"] < 0.1  # quantized for real (an FP32 copy would be exact), and close
    quantized = onnx.load(str(edge.out / int8.model_file.path))
    assert sum(n.op_type == "DequantizeLinear" for n in quantized.graph.node) >= 2


def test_agent_takes_the_bound_value_or_none_refuses_another_and_the_hub_gets_it(compiled):
    tmp, model, edge, hub_dir = compiled
    x = _audio(1, 7)
    expected = float(_run(model, {"audio": x, "sr": SR})[0, 0])
    hub = InferenceServer(hub_dir, hub_profile="ort-fp32")  # the model as given: it needs sr
    hub.start()
    try:
        cfg = AgentConfig.from_keys(
            {
                "trust.allow_unsigned": True,
                "model.dir": edge.out,
                "model.variant": "onnxruntime-fp32",
                "server.endpoint": f"ipc://{tmp}/bound.sock",
                "hard_examples.data_dir": tmp / "data",
                "fallback.hub_url": hub.address,
                "fallback.hub_model": "rate",
            }
        )
        with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
            alone = client.infer({"audio": x}, mode="edge", return_outputs=True)
            sent = client.infer({"audio": x, "sr": SR}, mode="edge", return_outputs=True)
            with pytest.raises(BadRequestError, match=r"'sr' is bound to 16000 .* the request sent 8000"):
                client.infer({"audio": x, "sr": np.array(8000, np.int64)}, mode="edge")
            cloud = client.infer({"audio": x}, mode="cloud", return_outputs=True)
    finally:
        hub.stop()
    for answer in (alone, sent):
        assert float(answer.outputs["output"][0, 0]) == pytest.approx(expected, abs=1e-6)
    assert cloud.source == "cloud", cloud.detail  # the hub's unspecialized model got sr=16000 with the audio
    assert float(cloud.outputs["output"][0, 0]) == pytest.approx(expected, abs=1e-6)


def test_a_hub_serving_the_specialized_variant_checks_and_drops_the_bound_input(compiled):
    _, _, edge, _ = compiled
    cloud = load_cloud_model(edge.out, variant_id="onnxruntime-fp32", verify_hashes=False)
    try:
        x = _audio(2, 3)
        assert list(cloud.check_inputs({"audio": x, "sr": SR})) == ["audio"]
        with pytest.raises(BadInputError, match="bound to 16000"):
            cloud.check_inputs({"audio": x, "sr": np.array(8000, np.int64)})
    finally:
        cloud.close()


def test_an_nncf_refusal_keeps_the_line_that_says_why():
    """What Silero's dynamic-batch OpenVINO INT8 is refused with: the reason, not a C++ file name."""
    from tandem.model_compiler.variants.openvino import _openvino_reason

    raised = RuntimeError(
        "Exception from src/inference/src/cpp/core.cpp:117:\n"
        "Exception from src/inference/src/dev/plugin.cpp:54:\n"
        "Check '!shape.rank().is_dynamic()' failed at src/plugins/intel_cpu/src/node.cpp:108:\n"
        "Unexpected: CPU plug-in doesn't support If operation with dynamic rank. Operation name: If_3\n\n"
    )
    assert _openvino_reason(raised) == (
        "RuntimeError: Unexpected: CPU plug-in doesn't support If operation with dynamic rank. Operation name: If_3"
    )


def test_static_buckets_keep_each_inputs_own_batch_axis():
    """Silero's state [2, N, 128] is batched on axis 1: a static bucket builds it at [2, 1, 128] and
    never fits or pads it (it used to take N from the calibration data's sample count, so the
    npu-intel FP16 build ran '[2,0,128] expecting [2,1,128]' and INT8 saw 'sample counts [1, 32]')."""
    from tandem.model_compiler.variants.shapes import dynamic_axes, static_shapes

    graph = helper.make_graph(
        [helper.make_node("Identity", ["state"], ["stateN"]), helper.make_node("Identity", ["input"], ["y"])],
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", "w"]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "n", 128]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "w"]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "n", 128]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = {"input": np.zeros((32, 576), np.float32), "state": np.zeros((2, 32, 128), np.float32)}
    assert static_shapes(model, calib) == {"input": [1, 576], "state": [2, 1, 128]}
    assert dynamic_axes(model) == {"input": [1], "state": []}
    image = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "img",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "h", "w"])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    # exported at batch 1: H and W stay bucketable, taken from the calibration data (as before)
    assert static_shapes(image, {"x": np.zeros((1, 3, 48, 160), np.float32)}) == {"x": [1, 3, 48, 160]}
    assert dynamic_axes(image) == {"x": [2, 3]}
