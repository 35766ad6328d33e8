"""The hub speaks the Open Inference Protocol whole: a stock tritonclient (HTTP and gRPC) walks every endpoint.

A real Hub serves a tiny linear-softmax model (onnx.helper) on loopback; answers are
compared with ONNX Runtime run directly, errors with the codes v2 clients expect.
"""

from __future__ import annotations

import gc
import json
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from agent_fixtures import make_linear_softmax, make_model_dir

tclient_http = pytest.importorskip("tritonclient.http")
tclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402  (after the skip above)

MODEL = "lin"
ALIAS_VERSION = "2"  # the integer major of 2.1.0, as Triton clients send versions


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return make_linear_softmax(tmp_path_factory.mktemp("lin") / "lin.onnx", n_in=4, n_out=3)


@pytest.fixture(scope="module")
def hub(model_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("v2hub")
    model_dir = make_model_dir(model_file, root / "lin", name=MODEL, version="2.1.0")
    config = HubConfig.from_keys(
        {
            "data_dir": root / "hub",
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.url": "mqtt://127.0.0.1:1",
            "telemetry.enabled": False,
            "rollouts.enabled": False,
            "models.dirs": (model_dir,),
        }
    )
    with Hub(config).start() as running:
        yield running


@pytest.fixture(scope="module")
def token(hub):
    return hub.tokens.create("v2-walk", "read").token


@pytest.fixture(scope="module")
def reference(model_file):
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


@pytest.fixture
def http(hub, token):
    client = tclient_http.InferenceServerClient(hub.http_url.removeprefix("http://"))
    yield client
    client.close()
    del client
    gc.collect()  # its __del__ joins a gevent pool: collected here, not in a hub thread that happens to run the GC


@pytest.fixture
def grpc_client(hub):
    client = tclient_grpc.InferenceServerClient(hub.urls()["grpc"])
    yield client
    client.close()


class _Auth(dict):
    """The bearer header, fresh per call: tritonclient.http writes Inference-Header-Content-Length into the
    headers dict it is given, which would leak into the next call."""

    def __init__(self, token: str) -> None:
        super().__init__(Authorization=f"Bearer {token}")

    def copy(self) -> "_Auth":
        return _Auth(self["Authorization"].removeprefix("Bearer "))


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)


def test_tritonclient_http_walks_every_endpoint(http, token, reference):
    h = _Auth(token)
    assert http.is_server_live() and http.is_server_ready()
    meta = http.get_server_metadata(headers=h.copy())
    assert meta["name"] == "tandem-hub" and "binary_tensor_data" in meta["extensions"]
    assert http.is_model_ready(MODEL, headers=h.copy())
    assert http.is_model_ready(MODEL, model_version=ALIAS_VERSION, headers=h.copy())
    assert not http.is_model_ready(MODEL, model_version="3", headers=h.copy())
    model = http.get_model_metadata(MODEL, headers=h.copy())
    assert model["versions"] == ["2.1.0"] and model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    config = http.get_model_config(MODEL, model_version=ALIAS_VERSION, headers=h.copy())
    assert config["max_batch_size"] >= 1 and config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert http.get_model_repository_index(headers=h.copy()) == [
        {"name": MODEL, "version": "2.1.0", "state": "READY", "reason": ""}
    ]

    for binary in (True, False):  # the binary tensor data extension and plain JSON tensors
        x = _x(5, seed=int(binary))
        tensor = tclient_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = tclient_http.InferRequestedOutput("y", binary_data=binary)
        result = http.infer(MODEL, [tensor], outputs=[out], request_id=f"r{binary}", headers=h.copy())
        np.testing.assert_allclose(result.as_numpy("y"), reference(x), rtol=1e-6, atol=1e-6)
        assert result.get_response()["id"] == f"r{binary}"

    stats = http.get_inference_statistics(MODEL, headers=h.copy())["model_stats"][0]
    assert stats["name"] == MODEL and stats["inference_stats"]["success"]["count"] >= 2
    assert stats["inference_count"] >= 10 and stats["execution_count"] >= 2


def test_rest_errors_use_v2_codes_and_name_the_problem(http, hub, token):
    h = _Auth(token)
    with pytest.raises(InferenceServerException) as err:
        http.get_model_metadata("no-such-model", headers=h.copy())
    assert err.value.status() == "404" and "no-such-model" in err.value.message()
    bad = tclient_http.InferInput("x", [2, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((2, 5), np.float32))
    with pytest.raises(InferenceServerException) as err:
        http.infer(MODEL, [bad], headers=h.copy())
    assert err.value.status() == "400" and "'x'" in err.value.message()
    import httpx

    url = f"{hub.http_url}/v2/models/{MODEL}/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]}
    answer = httpx.post(url, json=body, headers=h.copy())
    assert answer.status_code == 400 and "'x'" in answer.json()["error"]
    assert httpx.post(url, json=body).status_code == 401  # inference needs a token, like the rest of the console
    assert httpx.get(f"{hub.http_url}/v2/health/ready").status_code == 200  # probes need none


def test_an_empty_batch_gets_an_empty_answer_over_rest_and_grpc(http, grpc_client, token):
    h = _Auth(token)
    empty = np.zeros((0, 4), np.float32)
    tensor = tclient_http.InferInput("x", [0, 4], "FP32")
    tensor.set_data_from_numpy(empty)
    assert http.infer(MODEL, [tensor], headers=h.copy()).as_numpy("y").shape == (0, 3)
    gtensor = tclient_grpc.InferInput("x", [0, 4], "FP32")
    gtensor.set_data_from_numpy(empty)
    assert grpc_client.infer(MODEL, [gtensor]).as_numpy("y").shape == (0, 3)


def test_tritonclient_grpc_walks_every_endpoint(grpc_client, hub, reference):
    c = grpc_client
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, ALIAS_VERSION)
    assert "statistics" in c.get_server_metadata().extensions
    assert c.get_model_metadata(MODEL, ALIAS_VERSION).versions == ["2.1.0"]
    config = c.get_model_config(MODEL).config
    assert config.name == MODEL and config.platform == "onnxruntime_onnx" and list(config.input[0].dims) == [4]
    assert [(m.name, m.state) for m in c.get_model_repository_index().models] == [(MODEL, "READY")]

    x = _x(3, seed=7)
    tensor = tclient_grpc.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = c.infer(MODEL, [tensor], model_version=ALIAS_VERSION)
    np.testing.assert_allclose(result.as_numpy("y"), reference(x), rtol=1e-6, atol=1e-6)
    stats = c.get_inference_statistics(MODEL).model_stats[0]
    assert stats.inference_stats.success.count >= 1 and stats.last_inference > 0

    # ModelStreamInfer: answers in order, a bad request answers an error and the stream goes on.
    answers: list = []
    c.start_stream(callback=lambda result, error: answers.append((result, error)))
    try:
        for i in range(3):
            rows = _x(1 + i, seed=i)
            t = tclient_grpc.InferInput("x", list(rows.shape), "FP32")
            t.set_data_from_numpy(rows)
            c.async_stream_infer(MODEL, [t], request_id=str(i))
        bad = tclient_grpc.InferInput("x", [1, 5], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
        c.async_stream_infer(MODEL, [bad], request_id="bad")
        deadline = time.monotonic() + 20
        while len(answers) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        c.stop_stream()
    assert [r.get_response().id for r, e in answers[:3]] == ["0", "1", "2"]
    assert all(e is None for _, e in answers[:3])
    assert answers[3][1] is not None and "'x'" in str(answers[3][1])


def test_grpc_health_per_model_and_reflection(hub):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(hub.urls()["grpc"])
    try:
        health = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "inference.GRPCInferenceService", MODEL):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == serving
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=MODEL), timeout=5)
        assert next(watch).status == serving
        watch.cancel()

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(
            reflect.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
                    ]
                ),
                timeout=5,
            )
        )
        services = {s.name for s in answers[0].list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services
        assert answers[1].file_descriptor_response.file_descriptor_proto  # grpcurl can describe ModelInfer
    finally:
        channel.close()


def test_resource_exhausted_carries_a_retry_pushback(hub):
    """A full queue answers RESOURCE_EXHAUSTED with grpc-retry-pushback-ms (REST: 429 with Retry-After)."""
    from tandem.cloud_hub.inference.rest import error_response
    from tandem.cloud_hub.inference.servicer import RETRY_PUSHBACK_KEY, RpcFailure
    from tandem.hardware_profiles.runtimes.batching import QueueFullError

    model = hub._inference.servicer.models[MODEL]
    real_submit = model.batcher.submit

    def full(feeds):
        raise QueueFullError("queue full (128 waiting)")

    model.batcher.submit = full
    # a model measured tiny runs in the caller, never queued: make this one go to the (full) queue
    servicer = hub._inference.servicer
    inline_max_s, servicer.inline_max_s = servicer.inline_max_s, 0.0
    channel = grpc.insecure_channel(hub.urls()["grpc"])
    try:
        request = pb.ModelInferRequest(model_name=MODEL)
        t = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.zeros(4, np.float32).tobytes())
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        pushback = dict(err.value.trailing_metadata())[RETRY_PUSHBACK_KEY]
        assert int(pushback) >= 10
        assert t.name == "x"
    finally:
        model.batcher.submit = real_submit
        servicer.inline_max_s = inline_max_s
        channel.close()
    answer = error_response(RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", retry_after_ms=1500))
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "2"
    assert json.loads(answer.body)["error"] == "full"


def _top_k(scores: np.ndarray, k: int) -> list[list[bytes]]:
    """Triton's classification answer computed here: "value:index" (C's %f), best first, ties by index."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[f"{scores[r, i]:f}:{i}".encode() for i in row] for r, row in enumerate(order)]


def test_the_classification_extension_answers_top_k_as_triton_does(http, grpc_client, token, reference):
    """tritonclient's class_count on both doors, JSON and binary (seen failing before: INVALID_ARGUMENT
    'the classification (top-k) extension is not supported')."""
    x = _x(4, seed=3)
    want = _top_k(reference(x), 2)
    for binary in (True, False):
        tensor = tclient_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        out = tclient_http.InferRequestedOutput("y", binary_data=binary, class_count=2)
        got = http.infer(MODEL, [tensor], outputs=[out], headers=_Auth(token).copy()).as_numpy("y")
        as_bytes = [[v if isinstance(v, bytes) else v.encode() for v in row] for row in got.tolist()]  # JSON: str
        assert got.shape == (4, 2) and as_bytes == want, (binary, got)
    gtensor = tclient_grpc.InferInput("x", list(x.shape), "FP32")
    gtensor.set_data_from_numpy(x)
    answer = grpc_client.infer(MODEL, [gtensor], outputs=[tclient_grpc.InferRequestedOutput("y", class_count=9)])
    assert answer.get_output("y").datatype == "BYTES"
    assert answer.as_numpy("y").tolist() == _top_k(reference(x), 3)  # k past the class count: every class
    empty = tclient_grpc.InferInput("x", [0, 4], "FP32")
    empty.set_data_from_numpy(np.zeros((0, 4), np.float32))
    answer = grpc_client.infer(MODEL, [empty], outputs=[tclient_grpc.InferRequestedOutput("y", class_count=2)])
    assert answer.as_numpy("y").shape == (0, 2)
    with pytest.raises(InferenceServerException) as err:
        grpc_client.infer(MODEL, [gtensor], outputs=[tclient_grpc.InferRequestedOutput("y", class_count=-1)])
    assert "parameter 'classification' must be a positive integer" in err.value.message()
    assert "classification" in grpc_client.get_server_metadata().extensions


def test_compressed_request_bodies_are_inflated(http, grpc_client, hub, token, reference):
    """tritonclient.http's request_compression_algorithm (seen failing before: 400 'not JSON: utf-8 codec
    can't decode byte 0x8b'); an unknown coding is 415, a gzip bomb stops at the body limit."""
    import gzip

    import httpx

    x = _x(3, seed=5)
    for algorithm in ("gzip", "deflate"):
        tensor = tclient_http.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = http.infer(MODEL, [tensor], headers=_Auth(token).copy(), request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("y"), reference(x), rtol=1e-6, atol=1e-6)
    gtensor = tclient_grpc.InferInput("x", list(x.shape), "FP32")
    gtensor.set_data_from_numpy(x)
    result = grpc_client.infer(MODEL, [gtensor], compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("y"), reference(x), rtol=1e-6, atol=1e-6)

    url = f"{hub.http_url}/v2/models/{MODEL}/infer"
    auth = {"Authorization": f"Bearer {token}"}
    answer = httpx.post(url, content=b"xx", headers=auth | {"Content-Encoding": "br"})
    assert answer.status_code == 415 and "Content-Encoding 'br' is not supported" in answer.json()["error"]
    bomb = gzip.compress(b"\0" * (81 * 1024 * 1024), compresslevel=1)
    answer = httpx.post(url, content=bomb, headers=auth | {"Content-Encoding": "gzip"}, timeout=60)
    assert answer.status_code == 400 and "inflates past" in answer.json()["error"]


def test_what_the_hub_lacks_is_refused_by_name_on_both_doors(http, grpc_client, token):
    """Repository load/unload, shared memory, trace and log settings: UNIMPLEMENTED / 501 with the reason (seen
    failing before: gRPC 'Method not found!', REST a 404 tritonclient could not parse); a tensor naming a
    shared-memory region is refused (before: an output's region was ignored and the answer sent in the body)."""
    calls = {
        "load": (lambda c, **h: c.load_model(MODEL, **h), "model load is not supported"),
        "unload": (lambda c, **h: c.unload_model(MODEL, **h), "model unload is not supported"),
        "shm": (lambda c, **h: c.get_system_shared_memory_status(**h), "system shared memory is not supported"),
        "cuda": (lambda c, **h: c.get_cuda_shared_memory_status(**h), "CUDA shared memory is not supported"),
        "register": (
            lambda c, **h: c.register_system_shared_memory("r", "/k", 16, **h),
            "system shared memory is not supported",
        ),
        "trace": (lambda c, **h: c.get_trace_settings(**h), "trace settings are not supported"),
        "log": (lambda c, **h: c.get_log_settings(**h), "log settings are not supported"),
    }
    for name, (call, message) in calls.items():
        with pytest.raises(InferenceServerException) as err:
            call(grpc_client)
        assert err.value.status() == "StatusCode.UNIMPLEMENTED" and message in err.value.message(), name
        with pytest.raises(InferenceServerException) as err:
            call(http, headers=_Auth(token).copy())
        assert err.value.status() == "501" and message in err.value.message(), name

    x = _x(2)
    region = tclient_grpc.InferInput("x", [2, 4], "FP32")
    region.set_shared_memory("in0", 32)
    plain = tclient_grpc.InferInput("x", [2, 4], "FP32")
    plain.set_data_from_numpy(x)
    into_region = tclient_grpc.InferRequestedOutput("y")
    into_region.set_shared_memory("out0", 24)
    for inputs, outputs, where in (([region], None, "input 'x'"), ([plain], [into_region], "output 'y'")):
        with pytest.raises(InferenceServerException) as err:
            grpc_client.infer(MODEL, inputs, outputs=outputs)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert f"{where}: system and CUDA shared memory is not supported" in err.value.message()
    hregion = tclient_http.InferInput("x", [2, 4], "FP32")
    hregion.set_shared_memory("in0", 32)
    hplain = tclient_http.InferInput("x", [2, 4], "FP32")
    hplain.set_data_from_numpy(x)
    hout = tclient_http.InferRequestedOutput("y")
    hout.set_shared_memory("out0", 24)
    for inputs, outputs, where in (([hregion], None, "input 'x'"), ([hplain], [hout], "output 'y'")):
        with pytest.raises(InferenceServerException) as err:
            http.infer(MODEL, inputs, outputs=outputs, headers=_Auth(token).copy())
        assert err.value.status() == "400" and f"{where}: system and CUDA shared memory" in err.value.message()


def test_every_v2_rest_error_is_v2_shaped(http, hub, token):
    """401, 404 and 405 under /v2 answer {"error": ...}, which tritonclient reads (seen failing before: FastAPI's
    {"detail": ...}, which tritonclient.http reported as 'an exception occurred in the client while decoding
    the response: 'error''); the console keeps {"detail": ...}."""
    import httpx

    with pytest.raises(InferenceServerException) as err:
        http.get_server_metadata()  # no token
    assert err.value.status() == "401" and "missing bearer token" in err.value.message()
    auth = {"Authorization": f"Bearer {token}"}
    answer = httpx.get(f"{hub.http_url}/v2/nothing", headers=auth)
    assert answer.status_code == 404 and answer.json() == {
        "error": "no such Open Inference Protocol endpoint: GET /v2/nothing"
    }
    answer = httpx.get(f"{hub.http_url}/v2/models/{MODEL}/infer", headers=auth)
    assert answer.status_code == 405 and "GET is not allowed" in answer.json()["error"]
    answer = httpx.post(
        f"{hub.http_url}/v2/models/{MODEL}/infer",
        content=b"{}",
        headers=auth | {"Inference-Header-Content-Length": "abc"},
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "Inference-Header-Content-Length 'abc' is not a byte count"}
    assert "detail" in httpx.get(f"{hub.http_url}/v1/devices").json()  # the console's own shape
