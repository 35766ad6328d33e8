"""The agent falls back to a third-party v2 server: KServe's own ModelServer (the `kserve` package from
PyPI, in its own virtualenv since it pins protobuf<7; `make kserve-venv`, which `make test` runs).

KServe serves the cloud model over v2 gRPC on 127.0.0.1; the agent's answers from it must equal
onnxruntime's on the same model, and KServe's INTERNAL answer to a request its model cannot take must
not open the agent's breaker as if the server were down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dependencies import missing
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.breaker import CircuitBreaker
from tandem.edge_agent.errors import FallbackUnavailable
from tandem.edge_agent.fallback import FallbackClient
from agent_fixtures import free_port, make_linear_softmax, make_model_dir

pytestmark = pytest.mark.slow  # KServe's server takes seconds to import and start

ROOT = Path(__file__).resolve().parent.parent
KSERVE_VENV = ROOT / "build" / "kserve-venv"
KSERVE_PYTHON = KSERVE_VENV / "bin" / "python"
SERVER = Path(__file__).with_name("kserve_v2_server.py")
START_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def kserve(tmp_path_factory):
    """(address, the served ONNX model) of a running KServe ModelServer; stopped after the module."""
    if not (KSERVE_VENV / ".installed").exists():  # the Makefile's stamp: the install completed
        pytest.skip(missing("kserve virtualenv", f"`make kserve-venv` creates {KSERVE_VENV}"))
    root = tmp_path_factory.mktemp("kserve")
    model = make_linear_softmax(root / "cloud.onnx", seed=3)
    grpc_port, http_port = free_port(), free_port()
    log = open(root / "kserve.log", "wb")
    proc = subprocess.Popen(
        [str(KSERVE_PYTHON), str(SERVER), str(model), "lin", str(grpc_port), str(http_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": ""},
    )
    address = f"127.0.0.1:{grpc_port}"
    try:
        with FallbackClient(address, deadline_ms=1000) as probe:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not probe.ready(timeout_s=1.0):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"KServe did not come up: {(root / 'kserve.log').read_text()[-3000:]}")
                time.sleep(0.2)
        yield address, model
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_the_fallback_client_decodes_kserves_answers_exactly(kserve):
    address, model = kserve
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with FallbackClient(address, deadline_ms=5000) as client:
        result = client.infer("lin", {"x": x}, device_id="cam-k", model_version="1.0.0")
    np.testing.assert_array_equal(dict(result.outputs)["y"], want)


def test_an_agent_falls_back_to_kserve_and_answers_with_its_outputs(kserve, tmp_path):
    address, model = kserve
    edge = make_model_dir(make_linear_softmax(tmp_path / "edge.onnx"), tmp_path / "edge", name="lin")
    config = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": edge,
            "server.endpoint": f"ipc://{tmp_path}/agent.sock",
            "hard_examples.data_dir": tmp_path / "data",
            "fallback.hub_url": address,
            "fallback.deadline_ms": 5000,
            "server.device_id": "cam-k",
            "policy.threshold": 1.0,  # never confident: every request goes to KServe
        }
    )
    x = np.random.default_rng(1).random((1, 4), dtype=np.float32)
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with Agent(config) as agent, AgentClient(agent.endpoint) as client:
        answer = client.infer({"x": x}, return_outputs=True)
    assert answer.source == "cloud", answer.detail
    np.testing.assert_allclose(answer.outputs["y"], want, rtol=0, atol=0)
    assert answer.labels == [int(np.argmax(want[0]))]


def test_kserves_internal_answer_to_a_malformed_request_does_not_open_the_breaker(kserve):
    address, _ = kserve
    breaker = CircuitBreaker(failure_threshold=2, cool_down_s=60)
    with FallbackClient(address, deadline_ms=5000, breaker=breaker) as client:
        for _ in range(4):  # twice the breaker's failure count
            with pytest.raises(FallbackUnavailable, match="INTERNAL") as err:
                client.infer("lin", {"x": np.ones((1, 5), np.float32)}, device_id="cam-k", model_version="1.0.0")
            assert err.value.reason == "rejected"
        assert breaker.state == "closed"
        good = client.infer("lin", {"x": np.ones((1, 4), np.float32)}, device_id="cam-k", model_version="1.0.0")
    assert dict(good.outputs)["y"].shape == (1, 3)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
