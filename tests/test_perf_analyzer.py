"""Triton's perf_analyzer drives a real hub and reads its statistics back, by default and by integer version.

perf_analyzer finds "its" statistics entry by an integer version whose queue count grew while it
measured, then looks it up again by that integer: a hub that named the entry "2.1.0" (or kept no
queue count) stopped it with "missing statistics for requested model" / "failed to find the
requested model version". The statistics checks below run without perf_analyzer too.
"""

from __future__ import annotations

import grpc
import pytest

from perf_analyzer_tool import PerfAnalyzer, locate, run
from agent_fixtures import make_linear_softmax, make_model_dir
from dependencies import missing
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.protocols import inference_pb2 as pb
from tandem.protocols import inference_pb2_grpc as pb_grpc

MODEL = "lin"
ALIAS = "lin-edge"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("pahub")
    model_file = make_linear_softmax(root / "lin.onnx", n_in=4, n_out=3)
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
            "models.aliases": (f"{ALIAS}={MODEL}",),
        }
    )
    with Hub(config).start() as running:
        yield running


@pytest.fixture(scope="module")
def stub(hub):
    with grpc.insecure_channel(hub.urls()["grpc"]) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def perf_analyzer() -> PerfAnalyzer:
    tool = locate()
    if isinstance(tool, str):
        pytest.skip(missing(tool, "make test installs the dev extra and system-deps"))
    return tool


def _one_infer(stub) -> None:
    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([0.1, 0.2, 0.3, 0.4])
    stub.ModelInfer(request, timeout=10)


def test_statistics_name_the_version_and_model_the_client_asked_by(stub):
    _one_infer(stub)
    everything = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10).model_stats
    assert [(s.name, s.version) for s in everything] == [(MODEL, "2")]  # Triton's integer form
    for asked_name, asked_version in ((MODEL, ""), (MODEL, "2"), (MODEL, "2.1.0"), (ALIAS, "2")):
        reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=asked_name, version=asked_version), timeout=10)
        (entry,) = reply.model_stats
        assert (entry.name, entry.version) == (asked_name, asked_version or "2")
        assert entry.inference_stats.success.count >= 1
        # every request that reached the runtime is counted as queued once (perf_analyzer keys on it)
        assert entry.inference_stats.queue.count >= entry.inference_stats.success.count
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL, version="3"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "'3'" in err.value.details()


@pytest.mark.parametrize("version", ["", "2"], ids=["default-version", "integer-version"])
def test_perf_analyzer_measures_the_hub(perf_analyzer, hub, tmp_path, version):
    (level,) = run(
        perf_analyzer,
        hub.urls()["grpc"],
        MODEL,
        "x:4",
        tmp_path / "pa.csv",
        version=version,
        window_ms=500,
        stability_pct=1000,
    )
    assert level.concurrency == 1 and level.infer_per_s > 0
    assert 0 < level.p50_us <= level.p99_us
