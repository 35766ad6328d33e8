"""The hub's v2 gRPC endpoint and the agent's fallback client, on loopback with real models.

A compiled digits cloud model is served by a real InferenceServer; it is called with
our own stub, with a stock `tritonclient.grpc` client and with the edge agent's
FallbackClient, and its answers are compared with running the model directly.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from tandem.cloud_hub.errors import ConfigError
from tandem.cloud_hub.inference import InferenceServer, ModelDirError
from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.errors import FallbackUnavailable
from tandem.edge_agent.fallback import FallbackClient
from tandem.hardware_profiles.runtimes import load_session
from tandem.protocols import inference_params as params
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols.manifest import load_manifest
from tandem.protocols.tensor_codec import decode_response_outputs, encode_request_inputs
from agent_fixtures import make_model_dir
from hub_fixtures import CLOUD_NAME, EDGE_NAME, compile_digits

DEADLINE_MARGIN_S = 0.15  # thread hand-offs and a busy 2-core CI machine


@pytest.fixture(scope="module")
def cloud_dir(digits_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hub-models")
    return compile_digits(digits_dir, "cloud", tmp / "digits-cloud", name=CLOUD_NAME, key=tmp / "release.pem")


@pytest.fixture(scope="module")
def reference(cloud_dir):
    """The variant the hub serves, run directly in-process."""
    manifest = load_manifest(cloud_dir)
    variant = manifest.variant_for_profile("cpu-x86")
    session = load_session(variant.runtime, cloud_dir / variant.model_file.path)
    yield lambda x: session.run({"input": x})[0]
    session.close()


@pytest.fixture(scope="module")
def test_x(digits_dir) -> np.ndarray:
    return np.load(digits_dir / "test.npz")["x"].astype(np.float32)


@pytest.fixture(scope="module")
def hub(cloud_dir):
    server = InferenceServer(cloud_dir, aliases={EDGE_NAME: CLOUD_NAME})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def stub(hub):
    channel = grpc.insecure_channel(hub.address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def infer_request(x: np.ndarray, model: str = CLOUD_NAME, **extra) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **extra)
    encode_request_inputs(request, {"input": x})
    return request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- health and metadata ----------------------------------------------------------------


def test_health_and_metadata_describe_the_served_model(stub, cloud_dir):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=CLOUD_NAME)).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=EDGE_NAME)).ready  # the alias
    assert not stub.ModelReady(pb.ModelReadyRequest(name="no-such-model")).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).name == "tandem-hub"

    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name=CLOUD_NAME))
    manifest = load_manifest(cloud_dir)
    assert meta.name == CLOUD_NAME and list(meta.versions) == [manifest.version]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 64])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probabilities", "FP32", [-1, 10])]

    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="no-such-model"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "digits-cloud" in err.value.details()


# -- answers ----------------------------------------------------------------------------


def test_model_infer_answers_equal_running_the_model_directly(stub, reference, test_x):
    for rows in (test_x[:1], test_x[1:9], test_x[9:40]):
        response = stub.ModelInfer(infer_request(rows, id="req-7"), timeout=10)
        assert response.id == "req-7" and response.model_name == CLOUD_NAME
        got = decode_response_outputs(response)["probabilities"]
        want = reference(rows)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert (got.argmax(1) == want.argmax(1)).all()
    extras = {k: params.parameter_value(v) for k, v in response.parameters.items()}
    assert extras[params.VARIANT] == "onnxruntime-fp32" and extras[params.COMPUTE_MS] > 0


def test_concurrent_callers_each_get_their_own_rows_back(hub, stub, reference, test_x):
    """Micro-batching must split answers back to the right caller."""
    before = hub.models[CLOUD_NAME].batcher.stats()

    def call(i: int) -> bool:
        x = test_x[i % len(test_x) :][: 1 + i % 3]
        got = decode_response_outputs(stub.ModelInfer(infer_request(x), timeout=10))["probabilities"]
        return np.allclose(got, reference(x), rtol=1e-5, atol=1e-6)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(120)))
    after = hub.models[CLOUD_NAME].batcher.stats()
    assert after.requests - before.requests == 120
    assert after.rows - before.rows == sum(1 + i % 3 for i in range(120))


def test_a_stock_triton_client_gets_the_same_answers(hub, reference, test_x):
    import tritonclient.grpc as tgrpc

    client = tgrpc.InferenceServerClient(url=hub.address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(CLOUD_NAME)
        meta = client.get_model_metadata(CLOUD_NAME, as_json=True)
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}
        before = hub.stats().fallback_requests
        for model in (CLOUD_NAME, EDGE_NAME):
            x = test_x[:5]
            inp = tgrpc.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = client.infer(
                model,
                [inp],
                outputs=[tgrpc.InferRequestedOutput("probabilities")],
                parameters={params.DEVICE_ID: "triton-cam-1"},
                client_timeout=10,
            )
            np.testing.assert_allclose(result.as_numpy("probabilities"), reference(x), rtol=1e-5, atol=1e-6)
        assert hub.stats().fallback_requests - before == 2
        assert hub.stats().by_device["triton-cam-1"] >= 2
    finally:
        client.close()


# -- bad requests -----------------------------------------------------------------------


def _mutate(request: pb.ModelInferRequest, fn) -> pb.ModelInferRequest:
    fn(request)
    return request


BAD_REQUESTS = {
    "wrong datatype": (
        lambda x: infer_request(x.astype(np.int32)),
        "datatype INT32, model 'digits-cloud' expects FP32",
    ),
    "unknown datatype": (
        lambda x: _mutate(infer_request(x), lambda r: setattr(r.inputs[0], "datatype", "FP8")),
        "tensor 'input': unknown datatype 'FP8'",
    ),
    "a standard datatype the model does not take": (
        lambda x: infer_request(x.astype(np.float64)),
        "datatype FP64, model 'digits-cloud' expects FP32",
    ),
    "wrong shape": (lambda x: infer_request(x[:, :63].copy()), "shape [2, 63] does not fit ['N', 64]"),
    "wrong rank": (lambda x: infer_request(x.reshape(2, 8, 8)), "does not fit"),
    "bytes do not match shape": (
        lambda x: _mutate(infer_request(x), lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12)),
        "12 raw bytes do not match FP32 shape [2, 64]",
    ),
    "missing input": (lambda x: pb.ModelInferRequest(model_name=CLOUD_NAME), "missing input(s) input"),
    "unknown input": (
        lambda x: _mutate(infer_request(x), lambda r: setattr(r.inputs[0], "name", "pixels")),
        "unknown input(s) pixels",
    ),
    "NaN": (lambda x: infer_request(np.where(np.arange(64) == 3, np.nan, x).astype(np.float32)), "NaN or infinity"),
    "unknown output": (
        lambda x: _mutate(infer_request(x), lambda r: r.outputs.add(name="logits")),
        "no output(s) logits",
    ),
    "classification of no classes": (  # Triton's top-k extension is answered (tests/test_hub_v2_protocol.py); k=0 not
        lambda x: _mutate(
            infer_request(x),
            lambda r: r.outputs.add(name="probabilities").parameters["classification"].__setattr__("int64_param", 0),
        ),
        "parameter 'classification' must be a positive integer",
    ),
    "shared-memory input": (
        lambda x: _mutate(
            infer_request(x),
            lambda r: r.inputs[0].parameters["shared_memory_region"].__setattr__("string_param", "in0"),
        ),
        "input 'input': system and CUDA shared memory is not supported",
    ),
    # an empty batch [0, 64] is answered (the model batches on axis 0): tests/test_hub_v2_protocol.py
    "shape over the size limit": (
        lambda x: _mutate(
            infer_request(x), lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([2**40, 64]))
        ),
        "exceeds the limit",
    ),
    "empty model name": (lambda x: infer_request(x, model=""), "model name is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_are_invalid_argument_naming_the_problem(stub, test_x, case):
    make, phrase = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(make(test_x[:2]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert phrase in err.value.details()


def test_unknown_model_or_version_is_not_found_and_the_hub_keeps_serving(hub, stub, reference, test_x):
    for request, phrase in (
        (infer_request(test_x[:1], model="resnet"), "model 'resnet' is not served here"),
        (infer_request(test_x[:1], model_version="9.9.9"), "version '9.9.9' is not served"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and phrase in err.value.details()
    # Garbage on the wire (not a protobuf at all) is refused by gRPC itself.
    channel = grpc.insecure_channel(hub.address)
    raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError):
        raw(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
    channel.close()
    errors = hub.stats().errors
    assert errors["NOT_FOUND"] >= 2 and errors["INVALID_ARGUMENT"] >= len(BAD_REQUESTS)
    got = decode_response_outputs(stub.ModelInfer(infer_request(test_x[:3]), timeout=10))["probabilities"]
    np.testing.assert_allclose(got, reference(test_x[:3]), rtol=1e-5, atol=1e-6)


# -- overload ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_model_dir(ocr_cls_model, tmp_path_factory) -> Path:
    """The rapidocr orientation classifier: a real model that takes milliseconds per row."""
    return make_model_dir(ocr_cls_model, tmp_path_factory.mktemp("cls") / "ocr-cls", name="ocr-cls")


def _burst(address: str, x: np.ndarray, n: int) -> list[tuple[grpc.StatusCode, float, str]]:
    """Fire `n` ModelInfer calls at once; (status, seconds to answer, details) each."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="ocr-cls")
    encode_request_inputs(request, {"x": x})
    done: list[tuple[grpc.StatusCode, float, str]] = []
    lock = threading.Lock()
    finished = threading.Event()
    start = time.perf_counter()

    def on_done(future: grpc.Future) -> None:
        exc = future.exception()
        status = (grpc.StatusCode.OK, "") if exc is None else (exc.code(), exc.details())
        with lock:
            done.append((status[0], time.perf_counter() - start, status[1]))
            if len(done) == n:
                finished.set()

    futures = [stub.ModelInfer.future(request, timeout=30) for _ in range(n)]
    for f in futures:
        f.add_done_callback(on_done)
    assert finished.wait(60), "the burst did not finish"
    channel.close()
    return done


@pytest.mark.parametrize(
    "limits",
    [dict(max_concurrent_rpcs=2), dict(max_concurrent_rpcs=64, max_queue=1, max_batch=1)],
    ids=["concurrent-rpcs", "batcher-queue"],
)
def test_overload_answers_resource_exhausted_fast_and_recovers(slow_model_dir, limits):
    x = np.random.default_rng(1).random((1, 3, 48, 192), dtype=np.float32)
    server = InferenceServer(slow_model_dir, **limits)
    server.start()
    try:
        results = _burst(server.address, x, 48)
        codes = [code for code, _, _ in results]
        ok = codes.count(grpc.StatusCode.OK)
        shed = [(t, d) for code, t, d in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert ok + len(shed) == len(results), set(codes)
        assert ok >= 1 and len(shed) >= 1
        slowest_ok = max(t for code, t, _ in results if code == grpc.StatusCode.OK)
        # Shed requests are refused at once, not after waiting their turn.
        assert min(t for t, _ in shed) < slowest_ok
        # and none of them late: refusals took 0.05-0.09 s here under a load of 22, so 2 s is a 20x margin
        assert max(t for t, _ in shed) < 2.0
        if "max_queue" in limits:
            assert all("hub is overloaded" in d for _, d in shed)
        # ...and the hub serves normally once the burst is over.
        after = _burst(server.address, x, 1)
        assert after[0][0] == grpc.StatusCode.OK
    finally:
        server.stop()


# -- fallback client ----------------------------------------------------------------------


def test_fallback_client_gets_the_cloud_answer_and_the_hub_counts_the_edge_context(hub, reference, test_x):
    before = hub.stats()
    with FallbackClient(hub.address, deadline_ms=2000) as client:
        x = test_x[10:11]
        want = reference(x)
        wrong_label = (int(want.argmax()) + 1) % 10
        result = client.infer(
            EDGE_NAME,
            {"input": x},
            device_id="cam-42",
            model_version="1.0.0",
            edge_label=wrong_label,
            edge_confidence=0.41,
        )
        np.testing.assert_allclose(result.outputs["probabilities"], want, rtol=1e-5, atol=1e-6)
        assert result.model_name == CLOUD_NAME and result.variant == "onnxruntime-fp32"
        assert result.latency_ms > 0 and 0 < result.hub_compute_ms <= result.latency_ms
        result = client.infer(
            EDGE_NAME,
            {"input": x},
            device_id="cam-42",
            model_version="1.0.0",
            edge_label=int(want.argmax()),
            edge_confidence=0.55,
        )
    after = hub.stats()
    assert after.fallback_requests - before.fallback_requests == 2
    assert after.by_device["cam-42"] - before.by_device["cam-42"] == 2
    assert after.edge_disagreements - before.edge_disagreements == 1
    assert after.edge_agreements - before.edge_agreements == 1
    summary = json.loads(json.dumps(after.to_dict()))
    assert summary["top_devices"]["cam-42"] >= 2 and summary["mean_compute_ms"] > 0


def test_fallback_client_reports_a_missing_model_as_a_configuration_error(hub, test_x):
    # NOT_FOUND: every fallback to this name would fail alike, so it is no sign of a live hub (issue 24)
    breaker = CircuitBreaker(failure_threshold=1, cool_down_s=60)
    with FallbackClient(hub.address, deadline_ms=2000, breaker=breaker) as client:
        with pytest.raises(FallbackUnavailable, match="NOT_FOUND") as err:
            client.infer("no-such-model", {"input": test_x[:1]}, device_id="d", model_version="1.0.0")
        assert err.value.reason == "model_not_found" and "no-such-model" in (client.config_error or "")
        assert breaker.state == "open"


def test_a_stopped_hub_fails_within_the_deadline(cloud_dir, test_x):
    server = InferenceServer(cloud_dir)
    server.start()
    address = server.address
    server.stop()
    with FallbackClient(address, deadline_ms=200) as client:
        for _ in range(3):
            start = time.perf_counter()
            with pytest.raises(FallbackUnavailable) as err:
                client.infer(CLOUD_NAME, {"input": test_x[:1]}, device_id="d", model_version="1.0.0")
            assert time.perf_counter() - start < 0.2 + DEADLINE_MARGIN_S
            assert err.value.reason in ("unavailable", "deadline")


def test_a_hung_hub_fails_at_the_deadline(test_x):
    """A host that accepts TCP connections but never answers (hung process, black hole)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # never accept(): the kernel completes handshakes, nobody speaks HTTP/2
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        # a 1 s deadline, so a second of margin for a loaded machine still tells "at the deadline"
        # from "hangs on" (gRPC never fails a deadline early; 0.99 allows for clock rounding)
        with FallbackClient(address, deadline_ms=1000) as client:
            start = time.perf_counter()
            with pytest.raises(FallbackUnavailable) as err:
                client.infer(CLOUD_NAME, {"input": test_x[:1]}, device_id="d", model_version="1.0.0")
            elapsed = time.perf_counter() - start
    assert 0.99 <= elapsed < 2.0, elapsed
    assert err.value.reason == "deadline"


def test_breaker_opens_while_the_hub_is_down_and_closes_when_it_returns(cloud_dir, reference, test_x):
    port = free_port()
    breaker = CircuitBreaker(failure_threshold=3, cool_down_s=0.5)
    x = test_x[:1]
    with FallbackClient(f"127.0.0.1:{port}", deadline_ms=200, breaker=breaker) as client:
        call = lambda: client.infer(CLOUD_NAME, {"input": x}, device_id="d", model_version="1.0.0")  # noqa: E731
        for _ in range(3):
            with pytest.raises(FallbackUnavailable):
                call()
        assert breaker.state == "open"
        start = time.perf_counter()
        for _ in range(20):
            with pytest.raises(FallbackUnavailable) as err:
                call()
            assert err.value.reason == "breaker_open"
        # no network while open: all 20 refusals together take less than the one call's 200 ms
        # deadline they skip (about 100x what they cost on an idle machine)
        assert time.perf_counter() - start < 0.2

        server = InferenceServer(cloud_dir, port=port)
        server.start()
        try:
            deadline = time.monotonic() + 10
            while True:  # the first probe after the cool-down closes it
                time.sleep(0.1)
                try:
                    result = call()
                    break
                except FallbackUnavailable:
                    assert time.monotonic() < deadline, f"breaker never closed (state {breaker.state})"
            assert breaker.state == "closed"
            np.testing.assert_allclose(result.outputs["probabilities"], reference(x), rtol=1e-5, atol=1e-6)
        finally:
            server.stop()


# -- loading ------------------------------------------------------------------------------


def test_model_directories_that_cannot_be_served_are_refused_with_the_reason(cloud_dir, tmp_path):
    with pytest.raises(ModelDirError, match="not compiled for profile 'gpu-cuda'"):
        InferenceServer(cloud_dir, hub_profile="gpu-cuda").start()
    with pytest.raises(ConfigError, match="no-such-model"):
        InferenceServer(cloud_dir, aliases={"x": "no-such-model"}).start()
    with pytest.raises(ModelDirError, match="no manifest here"):
        InferenceServer(tmp_path).start()

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(cloud_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    chosen = manifest["profiles"]["cpu-x86"]["chosen"]
    rel = next(v for v in manifest["variants"] if v["id"] == chosen)["files"][0]["path"]
    data = bytearray((broken / rel).read_bytes())
    data[-1] ^= 0xFF
    (broken / rel).write_bytes(bytes(data))
    assert (
        hashlib.sha256(data).hexdigest()
        != next(v for v in manifest["variants"] if v["id"] == chosen)["files"][0]["sha256"]
    )
    with pytest.raises(ModelDirError, match="does not match its sha256"):
        InferenceServer(broken).start()


def test_a_port_in_use_is_reported(cloud_dir, hub):
    with pytest.raises(ConfigError, match=r"grpc\.port \(env TANDEM_HUB_GRPC_PORT\): cannot listen.*--grpc-port"):
        InferenceServer(cloud_dir, port=hub.port).start()


def test_typed_contents_requests_are_answered_too(stub, reference, test_x):
    """Some v2 clients send fp32_contents instead of raw bytes."""
    request = pb.ModelInferRequest(model_name=CLOUD_NAME)
    encode_request_inputs(request, {"input": test_x[:4]}, raw=False)
    assert not request.raw_input_contents
    got = decode_response_outputs(stub.ModelInfer(request, timeout=10))["probabilities"]
    np.testing.assert_allclose(got, reference(test_x[:4]), rtol=1e-5, atol=1e-6)


def test_fallback_spreads_over_hub_replicas_and_survives_losing_one(cloud_dir, reference, test_x):
    replicas = [InferenceServer(cloud_dir), InferenceServer(cloud_dir)]
    for r in replicas:
        r.start()
    try:
        target = "ipv4:" + ",".join(r.address for r in replicas)
        with FallbackClient(target, deadline_ms=1000) as client:
            x = test_x[:1]
            call = lambda: client.infer(CLOUD_NAME, {"input": x}, device_id="d", model_version="1.0.0")  # noqa: E731
            for _ in range(20):
                call()
            assert all(r.stats().ok >= 3 for r in replicas), [r.stats().ok for r in replicas]
            replicas[0].stop()
            answers = [call() for _ in range(10)]  # the safe retry moves a call off the dead replica
            np.testing.assert_allclose(answers[-1].outputs["probabilities"], reference(x), rtol=1e-5, atol=1e-6)
    finally:
        for r in replicas:
            r.stop()


def test_serve_forever_returns_when_asked_to_stop(cloud_dir):
    from tandem.cloud_hub.inference import serve_forever

    server = InferenceServer(cloud_dir)
    stop = threading.Event()
    thread = threading.Thread(target=serve_forever, args=(server, stop))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while server.port is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with FallbackClient(server.address, deadline_ms=2000) as client:
            assert client.ready()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    with FallbackClient(server.address, deadline_ms=100) as client:
        assert not client.ready(timeout_s=0.2)


def test_a_request_whose_deadline_passes_while_queued_is_answered_deadline_exceeded(slow_model_dir):
    from tandem.cloud_hub.inference.servicer import RpcFailure

    x = np.random.default_rng(2).random((4, 3, 48, 192), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="ocr-cls")
    encode_request_inputs(request, {"x": x})
    with InferenceServer(slow_model_dir) as server:
        seen = []
        with pytest.raises(RpcFailure) as err:
            server.servicer.infer(request, timeout_s=0.0, on_submit=seen.append)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(seen) == 1  # the batcher future was handed out (ModelInfer cancels it on disconnect)
        assert server.servicer.infer(request, timeout_s=10).outputs  # and the model still answers


def test_a_closed_fallback_client_raises_fallback_unavailable(hub, test_x):
    client = FallbackClient(hub.address, deadline_ms=500)
    client.close()
    with pytest.raises(FallbackUnavailable, match="closed") as err:
        client.infer(CLOUD_NAME, {"input": test_x[:1]}, device_id="d", model_version="1.0.0")
    assert err.value.reason == "closed"


def test_inputs_the_protocol_cannot_carry_fail_before_the_breaker_or_the_network(hub):
    breaker = CircuitBreaker(failure_threshold=1, cool_down_s=60)
    with FallbackClient(hub.address, deadline_ms=500, breaker=breaker) as client:
        with pytest.raises(FallbackUnavailable, match="complex64") as err:
            client.infer(CLOUD_NAME, {"input": np.zeros((1, 64), np.complex64)}, device_id="d", model_version="1")
    assert err.value.reason == "bad_request" and breaker.state == "closed"


def test_the_asyncio_client_answers_fails_within_the_deadline_and_trips_its_breaker(cloud_dir, reference, test_x):
    import asyncio

    from tandem.edge_agent.fallback import AsyncFallbackClient

    x = test_x[:1]

    async def story(server: InferenceServer) -> None:
        breaker = CircuitBreaker(failure_threshold=2, cool_down_s=60)
        async with AsyncFallbackClient(server.address, deadline_ms=200, breaker=breaker) as client:
            assert await client.ready()
            answers = await asyncio.gather(
                *[
                    client.infer(EDGE_NAME, {"input": test_x[i : i + 1]}, device_id="a", model_version="1.0.0")
                    for i in range(16)
                ]
            )
            for i, answer in enumerate(answers):
                np.testing.assert_allclose(
                    answer.outputs["probabilities"], reference(test_x[i : i + 1]), rtol=1e-5, atol=1e-6
                )
            server.stop()
            for _ in range(2):
                start = time.perf_counter()
                with pytest.raises(FallbackUnavailable):
                    await client.infer(EDGE_NAME, {"input": x}, device_id="a", model_version="1.0.0")
                assert time.perf_counter() - start < 0.2 + DEADLINE_MARGIN_S
            assert breaker.state == "open"
            with pytest.raises(FallbackUnavailable) as err:
                await client.infer(EDGE_NAME, {"input": x}, device_id="a", model_version="1.0.0")
            assert err.value.reason == "breaker_open"

    server = InferenceServer(cloud_dir, aliases={EDGE_NAME: CLOUD_NAME})
    server.start()
    try:
        asyncio.run(story(server))
    finally:
        server.stop()


def test_with_a_trusted_key_only_manifests_it_signed_are_served(cloud_dir):
    from tandem.protocols.signing import generate_private_key, load_private_key

    release = load_private_key(cloud_dir.parent / "release.pem").public_key()
    with InferenceServer(cloud_dir, trusted_key=release) as server:
        assert server.models[CLOUD_NAME].variant.id == "onnxruntime-fp32"
    with pytest.raises(ModelDirError, match="signature does not match the trusted key"):
        InferenceServer(cloud_dir, trusted_key=generate_private_key().public_key()).start()
