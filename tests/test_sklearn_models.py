"""scikit-learn models as users bring them (skl2onnx's defaults: a ZipMap on the probabilities, ai.onnx.ml
operators, string class labels, regressors) compile and serve: the agent and the hub (KServe v2 gRPC and
REST JSON, through a stock tritonclient) answer what ONNX Runtime answers on the ORIGINAL model.

Models are trained here on scikit-learn's bundled iris set (no download); compiles target cpu-x86 only
(ONNX Runtime, with OpenVINO refused by name) and take a few seconds each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.model_compiler.errors import CalibrationDataError, UnsupportedDtypeError
from tandem.model_compiler.model_io import io_specs
from tandem.model_compiler.pipeline import CompileOptions, compile_model
from tandem.tasks import TaskError, TaskSpec

skl2onnx = pytest.importorskip("skl2onnx")
datasets = pytest.importorskip("sklearn.datasets")
linear_model = pytest.importorskip("sklearn.linear_model")
ensemble = pytest.importorskip("sklearn.ensemble")

OPSETS = {"": 17, "ai.onnx.ml": 3}
NAMES = np.array(["setosa", "versicolor", "virginica"])


@pytest.fixture(scope="module")
def iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order].astype(np.float32), y[order].astype(np.int64)


def _export(model: Any, x: np.ndarray, path: Path) -> Path:
    onnx.save(skl2onnx.to_onnx(model, x[:1], target_opset=OPSETS), str(path))
    return path


def _compile(model: Path, tmp: Path, x: np.ndarray, y: np.ndarray | None, profiles: str = "cpu-x86") -> Path:
    np.savez(tmp / "calib.npz", x=x[:100])
    np.savez(tmp / "val.npz", x=x[100:], **({} if y is None else {"y": y[100:]}))
    out = tmp / "out"
    compile_model(
        CompileOptions(
            model=model,
            profiles=profiles.split(","),
            calib=tmp / "calib.npz",
            val=tmp / "val.npz",
            out=out,
            name=model.stem,
            signing_key=tmp / "publisher.pem",
            timing=False,
        )
    )
    return out


def _original_probabilities(model: Path, x: np.ndarray, labels: list[Any]) -> np.ndarray:
    """ONNX Runtime on the model as exported: ZipMap's list of {label: probability}, in label order."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rows = session.run(None, {session.get_inputs()[0].name: x})[names.index("output_probability")]
    return np.array([[row[label] for label in labels] for row in rows], dtype=np.float32)


def _agent_outputs(out: Path, x: np.ndarray, tmp: Path) -> tuple[dict[str, np.ndarray], list[int]]:
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": out,
            "server.endpoint": f"ipc://{tmp}/a.sock",
            "hard_examples.data_dir": tmp / "data",
            "policy.threshold": 0.0,
        }
    )
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        answer = client.infer(x, return_outputs=True)
    return answer.outputs, answer.labels


@pytest.fixture(scope="module")
def logistic(iris, tmp_path_factory) -> tuple[Path, Path]:
    x, y = iris
    tmp = tmp_path_factory.mktemp("lr")
    model = _export(linear_model.LogisticRegression(max_iter=500).fit(x[:100], y[:100]), x, tmp / "lr.onnx")
    return model, _compile(model, tmp, x, y)


@pytest.fixture(scope="module")
def string_labels(iris, tmp_path_factory) -> tuple[Path, Path]:
    """y of class names: output_label is tensor(string), the ZipMap's keys are strings."""
    x, y = iris
    tmp = tmp_path_factory.mktemp("lrs")
    model = _export(linear_model.LogisticRegression(max_iter=500).fit(x[:100], NAMES[y[:100]]), x, tmp / "lrs.onnx")
    return model, _compile(model, tmp, x, NAMES[y])


def test_zipmap_output_compiles_as_the_probability_tensor_with_its_labels(logistic):
    _, out = logistic
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"] == [
        {"name": "output_label", "dtype": "int64", "shape": [-1]},
        {"name": "output_probability", "dtype": "float32", "shape": [-1, 3]},
    ]
    assert manifest["task"]["kind"] == "classification" and manifest["task"]["output"] == "output_probability"
    assert manifest["task"]["labels"] == [0, 1, 2]
    assert any(n.startswith("ZipMap removed: output 'output_probability'") for n in manifest["source"]["notes"])
    assert "class labels: [0, 1, 2]" in (out / "report.md").read_text()
    assert manifest["profiles"]["cpu-x86"]["chosen"] == "onnxruntime-fp32"
    assert manifest["source"]["reference"]["accuracy"] > 0.9  # labels read against output_probability


def test_agent_serves_what_onnxruntime_gives_on_the_original_model(logistic, iris, tmp_path):
    model, out = logistic
    x = iris[0][100:]
    outputs, labels = _agent_outputs(out, x, tmp_path)
    expected = _original_probabilities(model, x, [0, 1, 2])
    np.testing.assert_allclose(outputs["output_probability"], expected, rtol=1e-5, atol=1e-6)
    assert labels == expected.argmax(axis=1).tolist()
    assert outputs["output_label"].tolist() == labels


def test_random_forest_compiles_and_serves(iris, tmp_path):
    x, y = iris
    forest = ensemble.RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x[:100], y[:100])
    model = _export(forest, x, tmp_path / "rf.onnx")
    out = _compile(model, tmp_path, x, y)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"]["labels"] == [0, 1, 2]
    outputs, _ = _agent_outputs(out, x[100:], tmp_path)
    np.testing.assert_allclose(
        outputs["output_probability"], _original_probabilities(model, x[100:], [0, 1, 2]), rtol=1e-5, atol=1e-6
    )


def test_string_labels_compile_without_the_string_output_and_carry_the_names(string_labels, iris, tmp_path):
    model, out = string_labels
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"] == [{"name": "output_probability", "dtype": "float32", "shape": [-1, 3]}]
    assert manifest["task"]["labels"] == NAMES.tolist()
    assert any("'output_label' (tensor(string)" in n for n in manifest["source"]["notes"])
    assert manifest["source"]["reference"]["accuracy"] > 0.9  # y given as class names, read by the labels
    x = iris[0][100:]
    outputs, labels = _agent_outputs(out, x, tmp_path)
    expected = _original_probabilities(model, x, NAMES.tolist())
    np.testing.assert_allclose(outputs["output_probability"], expected, rtol=1e-5, atol=1e-6)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert NAMES[labels].tolist() == session.run(["output_label"], {"X": x})[0].tolist()


def test_hub_serves_the_string_label_model_over_v2_grpc_and_rest(string_labels, iris, tmp_path):
    tclient_grpc = pytest.importorskip("tritonclient.grpc")
    tclient_http = pytest.importorskip("tritonclient.http")
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    model, out = string_labels
    x = iris[0][100:110]
    expected = _original_probabilities(model, x, NAMES.tolist())
    config = HubConfig.from_keys(
        {
            "data_dir": tmp_path / "hub",
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.url": "mqtt://127.0.0.1:1",
            "telemetry.enabled": False,
            "rollouts.enabled": False,
            "models.dirs": (out,),
        }
    )
    with Hub(config).start() as hub:
        client = tclient_grpc.InferenceServerClient(hub.urls()["grpc"])
        try:
            tensor = tclient_grpc.InferInput("X", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            got = client.infer("lrs", [tensor]).as_numpy("output_probability")
        finally:
            client.close()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        token = hub.tokens.create("sk", "read").token
        http = tclient_http.InferenceServerClient(hub.http_url.removeprefix("http://"))
        try:
            tensor = tclient_http.InferInput("X", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=False)  # plain v2 JSON tensors
            wanted = tclient_http.InferRequestedOutput("output_probability", binary_data=False)
            result = http.infer("lrs", [tensor], outputs=[wanted], headers={"Authorization": f"Bearer {token}"})
        finally:
            http.close()
        np.testing.assert_allclose(result.as_numpy("output_probability"), expected, rtol=1e-5, atol=1e-6)


def test_regressor_compiles_as_regression_and_serves_its_values(iris, tmp_path):
    x, _ = iris
    features, target = x[:, :3], x[:, 3]
    model = _export(linear_model.LinearRegression().fit(features[:100], target[:100]), features, tmp_path / "r.onnx")
    out = _compile(model, tmp_path, features, None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == {"kind": "regression", "output": "variable"}
    assert manifest["outputs"] == [{"name": "variable", "dtype": "float32", "shape": [-1, 1]}]
    outputs, _ = _agent_outputs(out, features[100:], tmp_path)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(outputs["variable"], session.run(None, {"X": features[100:]})[0], rtol=1e-5)


def test_scaler_and_mlp_pipeline_builds_fp16_and_int8_for_onnxruntime(iris, tmp_path):
    """ai.onnx.ml's Scaler before MatMuls: the FP16 variant loads (the converter casts the Scaler's FP32
    output back to FP16; without its type it fed an FP16 MatMul an FP32 tensor) and INT8 is built."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = iris
    mlp = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=2000, random_state=0)).fit(x[:100], y[:100])
    out = _compile(_export(mlp, x, tmp_path / "mlp.onnx"), tmp_path, x, y, profiles="gpu-cuda")
    manifest = json.loads((out / "manifest.json").read_text())
    built = {v["id"]: v for v in manifest["variants"]}
    assert {"onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8-s8s8-sym"} <= set(built)
    assert built["onnxruntime-fp16"]["metrics"]["accuracy"] >= manifest["source"]["reference"]["accuracy"] - 0.01
    assert manifest["profiles"]["gpu-cuda"]["chosen"] == "onnxruntime-fp16"


def test_profiles_whose_runtime_cannot_run_ai_onnx_ml_say_which_operator(logistic, iris, tmp_path):
    model, _ = logistic
    x, y = iris
    out = _compile(model, tmp_path, x, y, profiles="cpu-x86,gpu-intel,npu-litert")
    profiles = json.loads((out / "manifest.json").read_text())["profiles"]
    assert profiles["cpu-x86"]["chosen"] == "onnxruntime-fp32"
    assert {"variant": "openvino-*", "reason": profiles["gpu-intel"]["reason"]} in profiles["cpu-x86"]["skipped"]
    assert profiles["gpu-intel"]["chosen"] is None
    assert profiles["gpu-intel"]["reason"].startswith(
        "openvino cannot run operator LinearClassifier (domain ai.onnx.ml)"
    )
    assert profiles["npu-litert"]["chosen"] is None
    assert profiles["npu-litert"]["reason"].startswith(
        "litert cannot run operators LinearClassifier, Normalizer (domain ai.onnx.ml)"
    )


def test_onnxruntime_sample_model_of_ai_onnx_ml_only_compiles(iris, tmp_path):
    """onnxruntime's own logreg_iris.onnx imports ai.onnx.ml alone (no default opset) and takes [3, 2]."""
    from onnxruntime.datasets import get_example

    model = Path(get_example("logreg_iris.onnx"))
    x, y = iris
    np.savez(tmp_path / "calib.npz", x=x[:99, :2])
    np.savez(tmp_path / "val.npz", x=x[99:147, :2], y=y[99:147])
    out = tmp_path / "out"
    compile_model(
        CompileOptions(
            model=model,
            profiles=["cpu-x86"],
            calib=tmp_path / "calib.npz",
            val=tmp_path / "val.npz",
            out=out,
            signing_key=tmp_path / "publisher.pem",
            timing=False,
        )
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profiles"]["cpu-x86"]["chosen"] == "onnxruntime-fp32"
    assert manifest["task"]["output"] == "probabilities" and manifest["task"]["labels"] == [0, 1, 2]
    assert "no default ONNX opset" in (out / "report.md").read_text()


def test_other_non_tensor_outputs_are_refused_with_their_type(iris, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    seq = helper.make_value_info("s", helper.make_sequence_type_proto(helper.make_tensor_type_proto(1, None)))
    graph = helper.make_graph([helper.make_node("SequenceConstruct", ["x", "x"], ["s"])], "g", [x], [seq])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "seq.onnx"))
    with pytest.raises(UnsupportedDtypeError) as err:
        _compile(tmp_path / "seq.onnx", tmp_path, iris[0], None)
    assert "output 's' is ONNX type seq(tensor(float)), not a tensor" in str(err.value)
    assert "UNDEFINED" not in str(err.value)
    # a map the compiler does not rewrite (no ZipMap made it) is named whole
    m = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, None))
    model.graph.output[0].type.CopyFrom(helper.make_sequence_type_proto(m))
    with pytest.raises(UnsupportedDtypeError, match=r"seq\(map\(int64, tensor\(float\)\)\)"):
        io_specs(model)


def test_validation_labels_given_as_names_must_be_among_the_models(string_labels, iris, tmp_path):
    model, _ = string_labels
    x, y = iris
    wrong = NAMES[y].astype("<U12")
    wrong[120] = "iris-setosa"
    with pytest.raises(CalibrationDataError, match=r"'iris-setosa', not among the model's class labels"):
        _compile(model, tmp_path, x, wrong)


def test_task_labels_round_trip_and_are_checked():
    spec = TaskSpec("classification").with_options({"labels": "cat, dog"})
    assert spec.labels == ("cat", "dog") and TaskSpec.from_dict(spec.to_dict()) == spec
    assert TaskSpec("classification").with_options({"labels": "3,5,7"}).labels == (3, 5, 7)
    with pytest.raises(TaskError, match="named twice"):
        TaskSpec("classification", labels=("a", "a"))
    with pytest.raises(TaskError, match="all strings or all integers"):
        TaskSpec.from_dict({"kind": "classification", "labels": ["a", 1]})
