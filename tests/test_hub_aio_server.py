"""The hub's two v2 gRPC servers (issue 20): 64 calls in flight are served with the defaults (the
limit is `[grpc] max_concurrent_rpcs`, apart from the thread pool), past it the grpc.aio server tells
a caller RESOURCE_EXHAUSTED with a retry hint, a tiny model runs without a hand-off to the batcher's
thread, and the threaded (default) and aio servers answer alike. Real models (a tiny MatMul, the
PP-OCR orientation classifier) on loopback.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import ConfigError
from tandem.cloud_hub.inference import InferenceServer
from tandem.cloud_hub.inference.servicer import RETRY_PUSHBACK_KEY
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols.tensor_codec import decode_response_outputs, encode_request_inputs
from agent_fixtures import make_linear_softmax, make_model_dir

KINDS = ["aio", "threads"]


@pytest.fixture(scope="module")
def lin_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("aio-lin")
    return make_model_dir(make_linear_softmax(tmp / "lin.onnx"), tmp / "lin", name="lin")


@pytest.fixture(scope="module")
def cls_dir(ocr_cls_model, tmp_path_factory) -> Path:
    return make_model_dir(ocr_cls_model, tmp_path_factory.mktemp("aio-cls") / "ocr-cls", name="ocr-cls")


def _request(model: str, name: str, x: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    encode_request_inputs(request, {name: x})
    return request


def _closed_loop(address: str, request: pb.ModelInferRequest, inflight: int, total: int) -> Counter:
    """Keep `inflight` calls outstanding until `total` have ended; the status codes seen."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    codes: Counter = Counter()
    lock = threading.Lock()
    finished = threading.Event()
    issued = [0]

    def issue() -> None:
        stub.ModelInfer.future(request, timeout=60).add_done_callback(done)

    def done(future: grpc.Future) -> None:
        exc = future.exception()
        with lock:
            codes[grpc.StatusCode.OK if exc is None else exc.code()] += 1
            again = issued[0] < total
            issued[0] += again
            if sum(codes.values()) == total:
                finished.set()
        if again:
            issue()

    issued[0] = inflight
    for _ in range(inflight):
        issue()
    assert finished.wait(120), f"only {sum(codes.values())} of {total} calls ended"
    channel.close()
    return codes


@pytest.mark.parametrize("kind", KINDS)
def test_64_calls_in_flight_are_all_served_with_the_defaults(lin_dir, kind):
    # Before issue 20 the limit was the thread pool (64): this loop saw RESOURCE_EXHAUSTED (6 of 1,280
    # with max_concurrent_rpcs=64 on the threaded server).
    with InferenceServer(lin_dir, server=kind) as server:
        codes = _closed_loop(server.address, _request("lin", "x", np.ones((1, 4), np.float32)), 64, 1280)
        assert codes == Counter({grpc.StatusCode.OK: 1280})
        assert server.stats().errors == Counter()


def test_past_the_limit_a_caller_is_told_resource_exhausted_with_a_retry_hint(cls_dir):
    x = np.random.default_rng(0).random((4, 3, 48, 192), dtype=np.float32)
    request = _request("ocr-cls", "x", x)
    with InferenceServer(cls_dir, max_concurrent_rpcs=3, server="aio") as server:
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(request, timeout=60) for _ in range(24)]
        refused = [f for f in futures if f.exception() is not None]
        assert refused and len(refused) < len(futures)
        for f in refused:
            assert f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f.details()
            assert "max_concurrent_rpcs" in f.details()
            hint = dict(f.trailing_metadata() or ())
            assert int(hint[RETRY_PUSHBACK_KEY]) >= 10
        assert server.admission is not None and server.admission.stats.refused == len(refused)
        assert server.admission.in_flight == 0
        assert server.stats().errors["RESOURCE_EXHAUSTED"] == len(refused)
        assert stub.ModelInfer(request, timeout=60).outputs  # and it serves once the burst is over
        channel.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("inline_max_us", [200.0, 0.0])
def test_a_tiny_model_runs_without_a_hand_off_when_measured_fast_enough(lin_dir, inline_max_us, kind):
    with InferenceServer(lin_dir, inline_max_us=inline_max_us, server=kind) as server:
        batcher = server.models["lin"].batcher
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            # the first calls go to the batcher, whose smoothed run time must first fall below the bar
            # (a first run on a busy host takes milliseconds; each later one moves it 10% of the way)
            for _ in range(80):
                stub.ModelInfer(_request("lin", "x", np.ones((1, 4), np.float32)), timeout=10)
            before = batcher.stats().inline
            for _ in range(20):
                stub.ModelInfer(_request("lin", "x", np.ones((1, 4), np.float32)), timeout=10)
            inline = batcher.stats().inline - before
    # once inline, the fastest run seen keeps it inline: a preempted run does not turn it off
    assert inline == (20 if inline_max_us else 0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_tiny_model_stays_inline_under_concurrent_calls(lin_dir, kind):
    """Many calls at once never flip a tiny model into the batcher (the two throughput levels of issue 20:
    a call that found another one running went to the batcher, and the calls behind it followed)."""
    with InferenceServer(lin_dir, server=kind, workers=16) as server:
        batcher = server.models["lin"].batcher
        request = _request("lin", "x", np.ones((1, 4), np.float32))
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(80):  # until measured tiny (see the test above)
                stub.ModelInfer(request, timeout=10)
            before = batcher.stats()
        codes = _closed_loop(server.address, request, inflight=32, total=800)
        after = batcher.stats()
    assert codes == Counter({grpc.StatusCode.OK: 800})
    assert after.requests - before.requests == 800
    assert after.inline - before.inline == 800, f"batched: {after.batch_sizes}"


def _intra_op_threads(server: InferenceServer, name: str) -> int:
    return server.models[name].session._session.get_session_options().intra_op_num_threads  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
def test_a_tiny_model_runs_on_one_onnxruntime_thread(lin_dir, kind):
    # ONNX Runtime's default pool spins a thread per core after every run: beside the gRPC threads on
    # 2 cores that took ~0.85 ms of CPU per digits request at 64 in flight (bench/peers.py). A model the
    # load-time probe finds faster than inline_max_us (it runs inline) gets one thread instead.
    with InferenceServer(lin_dir, server=kind) as server:
        assert _intra_op_threads(server, "lin") == 1
        probe_s = server.models["lin"].probe_run_s
        assert probe_s is not None and probe_s < 200e-6
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            reply = stub.ModelInfer(_request("lin", "x", np.ones((1, 4), np.float32)), timeout=10)
        assert decode_response_outputs(reply)["y"].shape == (1, 3)
    with InferenceServer(lin_dir, server=kind, inline_max_us=0.0) as server:
        assert _intra_op_threads(server, "lin") == 0  # nothing runs inline: ONNX Runtime's default pool stays
    with InferenceServer(lin_dir, server=kind, threads=2) as server:
        assert _intra_op_threads(server, "lin") == 2  # a thread count asked for wins


@pytest.mark.parametrize("kind", KINDS)
def test_both_servers_answer_stream_health_and_errors_alike(lin_dir, kind):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    x = np.random.default_rng(1).random((2, 4), dtype=np.float32)
    with InferenceServer(lin_dir, server=kind, aliases={"edge-lin": "lin"}) as server:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            answer = stub.ModelInfer(_request("edge-lin", "x", x), timeout=10)
            y = decode_response_outputs(answer)["y"]
            np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
            stream = list(
                stub.ModelStreamInfer(
                    iter([_request("lin", "x", x), _request("lin", "nope", x), _request("lin", "x", x)]), timeout=10
                )
            )
            assert [bool(r.error_message) for r in stream] == [False, True, False]
            assert stream[1].error_message.startswith("INVALID_ARGUMENT") and "nope" in stream[1].error_message
            np.testing.assert_array_equal(decode_response_outputs(stream[2].infer_response)["y"], y)
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelMetadata(pb.ModelMetadataRequest(name="missing"), timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service="edge-lin"), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert stub.ModelStatistics(pb.ModelStatisticsRequest(name="lin"), timeout=10).model_stats


def test_grpc_server_settings_are_checked_by_name():
    config = HubConfig.from_keys({"grpc.server": "threads", "grpc.max_concurrent_rpcs": 512})
    assert (config.grpc.server, config.grpc.max_concurrent_rpcs) == ("threads", 512)
    assert HubConfig().grpc.max_concurrent_rpcs > 64  # 64 clients in flight must not be refused
    with pytest.raises(ConfigError, match="grpc.server"):
        HubConfig.from_keys({"grpc.server": "fibers"})
    with pytest.raises(ConfigError, match="grpc.max_concurrent_rpcs"):
        HubConfig.from_keys({"grpc.max_concurrent_rpcs": 0})
    with pytest.raises(ConfigError, match="grpc.inline_max_us"):
        HubConfig.from_keys({"grpc.inline_max_us": -1})
