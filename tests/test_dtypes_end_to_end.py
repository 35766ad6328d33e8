"""Every fixed-size v2 dtype the manifest knows goes through the compiler, the agent's local API and back,
and gives what ONNX Runtime gives when called directly (differential); what cannot be served is refused
by name.

One model takes an input of each dtype (`x_<dtype>`), casts each to float and sums them into a softmax
classifier, and echoes each input unchanged (`echo_<dtype>`): one compile and one agent request carry
all twelve dtypes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from agent_fixtures import make_model_dir
from compile_fixtures import ORT_FP32, compile_for_profile
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent import wire
from tandem.edge_agent.errors import BadRequestError
from tandem.hardware_profiles.runtimes import load_session
from tandem.hardware_profiles.runtimes.base import RuntimeUnavailableError
from tandem.model_compiler.errors import UnsupportedDtypeError
from tandem.model_compiler.model_io import io_specs
from tandem.protocols import limits
from tandem.protocols.manifest import DTYPES

ONNX_TYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "float64": TensorProto.DOUBLE,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32,
    "uint64": TensorProto.UINT64,
    "bool": TensorProto.BOOL,
}
SERVED = tuple(ONNX_TYPES)  # every fixed-size manifest dtype ONNX Runtime feeds from numpy
WIDTH = 4


def _all_dtypes_model(path: Path) -> Path:
    w = np.random.default_rng(0).normal(size=(WIDTH, 3)).astype(np.float32)
    nodes, inputs, outputs, casts = [], [], [], []
    for dtype, onnx_type in ONNX_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"x_{dtype}", onnx_type, ["n", WIDTH]))
        nodes.append(helper.make_node("Cast", [f"x_{dtype}"], [f"f_{dtype}"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Identity", [f"x_{dtype}"], [f"echo_{dtype}"]))
        outputs.append(helper.make_tensor_value_info(f"echo_{dtype}", onnx_type, ["n", WIDTH]))
        casts.append(f"f_{dtype}")
    nodes += [
        helper.make_node("Sum", casts, ["total"]),
        helper.make_node("MatMul", ["total", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    outputs.insert(0, helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3]))
    graph = helper.make_graph(nodes, "all_dtypes", inputs, outputs, [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """Values that use each dtype's range: negatives for signed types, > 2**31 for 64-bit ones."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for dtype in SERVED:
        dt = np.dtype(dtype)
        if dt.kind == "b":
            values = rng.integers(0, 2, size=(n, WIDTH)).astype(dt)
        elif dt.kind == "f":
            values = rng.normal(scale=3.0, size=(n, WIDTH)).astype(dt)
        else:
            info = np.iinfo(dt)
            values = rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), size=(n, WIDTH), dtype=dt)
        out[f"x_{dtype}"] = values
    return out


def _bf16_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["n", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return _all_dtypes_model(tmp_path_factory.mktemp("dtypes") / "all.onnx")


@pytest.fixture(scope="module")
def direct(model_file):
    session = load_session("onnxruntime", model_file)
    names = [o.name for o in session.outputs]
    return lambda feeds: dict(zip(names, session.run(feeds)))


def test_the_wire_carries_every_fixed_size_manifest_dtype():
    assert set(limits.WIRE_DTYPES) == set(DTYPES) - {"bytes"}
    rows = _rows(3, seed=1)
    header, arrays = wire.decode_request(wire.encode_request(rows))
    assert [t.dtype for t in header.inputs] == list(SERVED)
    for (name, sent), got in zip(rows.items(), arrays):
        assert got.dtype == sent.dtype and got.tobytes() == sent.tobytes(), name


def test_bfloat16_rides_the_wire_and_onnx_runtime_refuses_it_by_name(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.array([[1.5, -2.0]], dtype=ml_dtypes.bfloat16)
    _, (got,) = wire.decode_request(wire.encode_request({"x": x}))
    assert got.dtype == x.dtype and got.tobytes() == x.tobytes()
    with pytest.raises(RuntimeUnavailableError, match=r"input 'x' is bfloat16"):
        load_session("onnxruntime", _bf16_model(tmp_path / "bf16.onnx"))


def test_unknown_dtypes_are_refused_naming_the_tensor():
    with pytest.raises(BadRequestError, match=r"input 'z': dtype complex64 is not supported"):
        wire.encode_request({"z": np.zeros((1, 2), np.complex64)})
    frames = wire.encode_request({"z": np.zeros((1, 2), np.float32)})
    header, _ = wire.decode_request(frames)
    header.inputs[0].dtype = "float128"
    with pytest.raises(BadRequestError, match=r"tensor 'z': dtype 'float128' is not one of"):
        wire.decode_request([header.SerializeToString(), *frames[1:]])


def test_the_compiler_refuses_a_dtype_it_cannot_serve_naming_the_tensor(tmp_path):
    import onnx

    with pytest.raises(UnsupportedDtypeError, match=r"input 'x' is ONNX type BFLOAT16 \(16\): bfloat16"):
        io_specs(onnx.load(str(_bf16_model(tmp_path / "bf16.onnx"))))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, [1])],
        [helper.make_tensor_value_info("t", TensorProto.STRING, [1])],
    )
    with pytest.raises(UnsupportedDtypeError, match=r"input 's' is ONNX type STRING \(8\): a string tensor"):
        io_specs(helper.make_model(graph))


def test_the_compiler_builds_and_validates_a_model_taking_every_dtype(tmp_path, model_file, direct):
    result = compile_for_profile(
        tmp_path, ORT_FP32, model_file, _rows(32, seed=2), _rows(64, seed=3), force=True, progress=lambda message: None
    )
    (variant,) = result.manifest.variants
    assert [(s.name, s.dtype) for s in variant.inputs] == [(f"x_{d}", d) for d in SERVED]
    assert [s.dtype for s in variant.outputs] == ["float32", *SERVED]
    feeds = _rows(16, seed=4)
    served = load_session("onnxruntime", tmp_path / "out" / variant.files[0].path)
    got = dict(zip([o.name for o in served.outputs], served.run(feeds)))
    want = direct(feeds)
    np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
    for dtype in SERVED:
        assert got[f"echo_{dtype}"].tobytes() == feeds[f"x_{dtype}"].tobytes(), dtype


def test_the_agent_serves_every_dtype_as_onnx_runtime_does(tmp_path, model_file, direct):
    model_dir = make_model_dir(model_file, tmp_path / "model", name="dtypes")
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "server.endpoint": f"ipc://{tmp_path}/agent.sock",
            "hard_examples.data_dir": tmp_path / "data",
            "policy.output": "y",
            "policy.threshold": 0.0,
        }
    )
    feeds = _rows(5, seed=5)
    want = direct(feeds)
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        answer = client.infer(feeds, return_outputs=True)
        np.testing.assert_allclose(answer.outputs["y"], want["y"], rtol=1e-6, atol=1e-7)
        assert answer.labels == [int(i) for i in np.argmax(want["y"], axis=1)]
        for dtype in SERVED:
            echo = answer.outputs[f"echo_{dtype}"]
            assert echo.dtype == np.dtype(dtype) and echo.tobytes() == feeds[f"x_{dtype}"].tobytes(), dtype
        wrong = dict(feeds, x_int16=feeds["x_int16"].astype(np.int32))
        with pytest.raises(BadRequestError, match=r"input 'x_int16': dtype int32, the model expects int16"):
            client.infer(wrong)
