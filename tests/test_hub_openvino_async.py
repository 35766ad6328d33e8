"""The hub runs an OpenVINO variant's batches on asynchronous infer requests (issue 20): concurrent
callers get the answers the model gives them one at a time, each its own rows, and the synchronous
batcher stays available (`openvino_async=False`). The PP-OCR orientation classifier, read by
OpenVINO from its ONNX file, on loopback gRPC.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from tandem.cloud_hub.inference import InferenceServer
from tandem.hardware_profiles.runtimes import load_session
from tandem.hardware_profiles.runtimes.batching import MicroBatcher
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc
from tandem.protocols.tensor_codec import decode_response_outputs, encode_request_inputs
from agent_fixtures import make_model_dir

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ov_cls_dir(ocr_cls_model, tmp_path_factory) -> Path:
    """A model directory whose only variant is the classifier's ONNX file on the openvino runtime."""
    out = make_model_dir(ocr_cls_model, tmp_path_factory.mktemp("ov-cls") / "ocr-cls", name="ocr-cls")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["variants"][0]["runtime"] = "openvino"
    manifest["variants"][0]["options"] = {}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _ask(address: str, rows: list[np.ndarray]) -> list[np.ndarray]:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def one(x: np.ndarray) -> np.ndarray:
            request = pb.ModelInferRequest(model_name="ocr-cls")
            encode_request_inputs(request, {"x": x})
            return next(iter(decode_response_outputs(stub.ModelInfer(request, timeout=60)).values()))

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(one, rows))


@pytest.mark.parametrize("openvino_async", [True, False])
def test_concurrent_callers_each_get_their_own_rows(ov_cls_dir, openvino_async):
    from tandem.cloud_hub.inference.ov_async import AsyncInferBatcher

    rng = np.random.default_rng(7)
    rows = [rng.random((1 + i % 3, 3, 48, 192), dtype=np.float32) for i in range(48)]
    variant = ov_cls_dir / "variants" / "ort-fp32.onnx"
    session = load_session("openvino", variant)
    want = [session.run({"x": x})[0] for x in rows]
    session.close()
    with InferenceServer(ov_cls_dir, openvino_async=openvino_async, openvino_streams=2) as server:
        batcher = server.models["ocr-cls"].batcher
        assert isinstance(batcher, AsyncInferBatcher) == openvino_async
        assert isinstance(batcher, MicroBatcher)
        got = _ask(server.address, rows)
        stats = batcher.stats()
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    assert stats.rows == sum(len(x) for x in rows)
    assert stats.started == len(rows)  # Triton's queue count (ModelStatistics) sees every request
    if openvino_async:
        assert batcher.streams == 2
