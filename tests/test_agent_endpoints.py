"""Where the agent listens: tcp and ipc endpoints, and the errors an operator sees when it cannot."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from agent_fixtures import make_linear_softmax, make_model_dir
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.errors import ConfigError, ModelLoadError


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    return make_model_dir(make_linear_softmax(tmp / "src" / "lin.onnx"), tmp / "model", name="lin")


def config(tiny_dir, tmp_path, keys: dict | None = None) -> AgentConfig:
    return AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": tiny_dir,
            "hard_examples.data_dir": tmp_path / "data",
            "policy.threshold": 0.0,
            "server.endpoint": f"ipc://{tmp_path}/a.sock",
            **(keys or {}),
        }
    )


def test_tcp_endpoint_with_any_port_reports_the_bound_one(tiny_dir, tmp_path):
    with Agent(config(tiny_dir, tmp_path, {"server.endpoint": "tcp://127.0.0.1:0"})) as agent:
        assert agent.endpoint.startswith("tcp://127.0.0.1:") and not agent.endpoint.endswith(":0")
        with AgentClient(agent.endpoint) as client:
            assert client.infer(np.ones((2, 4), np.float32)).labels.__len__() == 2


def test_busy_tcp_port_and_busy_health_port_name_the_key(tiny_dir, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="server.endpoint: cannot bind"):
            Agent(config(tiny_dir, tmp_path, {"server.endpoint": f"tcp://127.0.0.1:{port}"})).start()
        with pytest.raises(ConfigError, match="health.http_port"):
            Agent(config(tiny_dir, tmp_path, {"health.http_port": port})).start()
    # a failed start released everything: the same ipc endpoint serves again
    with Agent(config(tiny_dir, tmp_path)) as agent, AgentClient(agent.endpoint) as client:
        assert client.infer(np.ones((1, 4), np.float32)).source == "edge"


def test_too_long_ipc_path_and_bad_model_dir_fail_at_start(tiny_dir, tmp_path):
    with pytest.raises(ConfigError, match="longer than"):
        Agent(config(tiny_dir, tmp_path, {"server.endpoint": "ipc:///tmp/" + "x" * 120})).start()
    with pytest.raises(ModelLoadError, match="no manifest here"):
        Agent(config(tmp_path, tmp_path)).start()
    with pytest.raises(ModelLoadError, match="not compiled for profile 'cpu-arm'"):
        Agent(config(tiny_dir, tmp_path, {"model.profile": "cpu-arm"})).start()


def test_static_shape_profiles_turn_batching_off(tmp_path):
    onnx_path = make_linear_softmax(tmp_path / "src" / "lin.onnx")
    model_dir = make_model_dir(onnx_path, tmp_path / "model", name="lin", profile="npu-intel")
    with Agent(config(model_dir, tmp_path, {"model.profile": "npu-intel", "batch.max_batch": 8})) as agent:
        assert agent.batcher.max_batch == 1 and not agent.batcher.batching
        with AgentClient(agent.endpoint) as client:
            assert client.infer(np.ones((1, 4), np.float32)).source == "edge"


def test_healthz_and_the_mqtt_status_say_which_variant_was_chosen_and_why(tiny_dir, tmp_path):
    from tandem.edge_agent.telemetry.service import MAX_SELECTION_REASON, selection_summary, status_info
    from tandem.edge_agent.telemetry.window import ModelInfo

    with Agent(config(tiny_dir, tmp_path)) as agent:
        ok, body = agent.healthz()
        assert ok and body["selection"]["variant"] == body["variant"]
        assert body["selection"]["runtime"] == body["runtime"] and body["selection"]["reason"]
        info = status_info("cam-1", ModelInfo("lin", "1.0.0"), "cpu-x86", {}, agent.model.selection)
    assert set(info["selection"]) <= {"variant", "runtime", "tier", "placement", "reason"}
    assert info["selection"]["variant"] == body["variant"] and "tried" not in info["selection"]
    long = selection_summary({"variant": "v", "reason": "x" * 5000, "probe": {"big": 1}})
    assert long == {"variant": "v", "reason": "x" * MAX_SELECTION_REASON}


@pytest.mark.parametrize("kind, expected", [("dense", None), ("classification", 0.3)])
def test_a_dense_tasks_map_threshold_is_not_taken_for_a_confidence_threshold(tiny_dir, tmp_path, kind, expected):
    """The compiler writes task.threshold for dense models to binarize maps (e.g. 0.3 for text maps)."""
    import json
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    doc = json.loads((model_dir / "manifest.json").read_text())
    doc["task"] = {**doc["task"], "kind": kind, "threshold": 0.3}
    (model_dir / "manifest.json").write_text(json.dumps(doc))
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": model_dir,
            "hard_examples.data_dir": tmp_path / "data",
            "server.endpoint": f"ipc://{tmp_path}/a.sock",
        }
    )
    with Agent(cfg) as agent:
        from tandem.tasks import DEFAULT_THRESHOLDS

        # a dense model is scored by its own confidence (tandem.tasks), at that measure's default
        assert agent.policy.threshold == (expected if expected is not None else DEFAULT_THRESHOLDS["dense"])
