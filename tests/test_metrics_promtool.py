"""/metrics follows Prometheus conventions: `promtool check metrics` is clean on the hub and the agent,
and OpenMetrics is served when the scraper asks for it."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import numpy as np
import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.protocols import prom
from agent_fixtures import make_linear_softmax, make_model_dir

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def promtool_problems(text: str) -> str:
    """promtool's lint output for `text` ('' when clean); skips loudly when promtool is not installed."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (Debian's prometheus package; `make system-deps` installs it)")
    done = subprocess.run([exe, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
    problems = (done.stdout + done.stderr).decode().strip()
    return problems if done.returncode != 0 or problems else ""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics-hub")
    model = make_linear_softmax(root / "lin.onnx")
    config = HubConfig.from_keys(
        {
            "data_dir": root / "hub",
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.url": "mqtt://127.0.0.1:1",
            "telemetry.enabled": False,
            "rollouts.enabled": False,
            "models.dirs": (make_model_dir(model, root / "lin", name="lin"),),
        }
    )
    with Hub(config).start() as running:
        yield running


def test_hub_metrics_pass_promtool_and_count_inference(hub):
    token = hub.tokens.create("prometheus", "read").token
    h = {"Authorization": f"Bearer {token}"}
    url = f"{hub.http_url}/v2/models/lin/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": np.ones(8).tolist()}]}
    assert httpx.post(url, json=body, headers=h).status_code == 200
    body["inputs"][0]["shape"] = [2, 5]
    assert httpx.post(url, json=body, headers=h).status_code == 400

    answer = httpx.get(f"{hub.http_url}/metrics", headers=h)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = answer.text
    assert promtool_problems(text) == ""
    assert 'tandem_hub_inference_requests_total{model="lin",version="1.0.0",variant="ort-fp32",code="OK"} 1' in text
    assert 'code="INVALID_ARGUMENT"} 1' in text
    for name in (
        "tandem_hub_inference_request_duration_seconds_bucket",
        "tandem_hub_inference_queue_depth",
        "tandem_hub_inference_batch_size_bucket",
        'tandem_hub_devices{status="online"}',
        "tandem_hub_build_info{",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
    assert httpx.get(f"{hub.http_url}/metrics").status_code == 401


def test_hub_metrics_speak_openmetrics_when_asked(hub):
    token = hub.tokens.create("om", "read").token
    answer = httpx.get(
        f"{hub.http_url}/metrics", headers={"Authorization": f"Bearer {token}", "Accept": OPENMETRICS_ACCEPT}
    )
    assert answer.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    text = answer.text
    assert text.endswith("# EOF\n")
    assert "# TYPE tandem_hub_inference_requests counter" in text  # the family, without _total
    assert "# TYPE process_cpu_seconds counter" in text
    _check_openmetrics(text)


def _check_openmetrics(text: str) -> None:
    """The rules Prometheus' OpenMetrics parser enforces that a clash would break: each family once, samples
    named after their family, counters' samples ending in _total."""
    families: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in families, f"family {name} declared twice"
            families[name] = kind
            current = name
        elif line and not line.startswith("#"):
            sample = line.split("{")[0].split(" ")[0]
            assert current is not None and sample.startswith(current), f"{sample} outside its family {current}"
            if families[current] == "counter":
                assert sample == current + "_total", sample


def test_families_refuse_names_that_break_the_conventions():
    with pytest.raises(ValueError, match="must end in _total"):
        prom.Family("tandem_x_batches", "counter", "x")
    with pytest.raises(ValueError, match="only counters"):
        prom.Family("tandem_x_batches_total", "gauge", "x")
    family = prom.Family("tandem_x_seconds", "histogram", "x").histogram((0.1, 1.0), [1, 2, 3], 9.5, {"m": 'a"b'})
    text = prom.render([family])
    assert 'tandem_x_seconds_bucket{m="a\\"b",le="1.0"} 3' in text and 'le="+Inf"} 6' in text
    assert promtool_problems(text) == ""


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    from tandem.edge_agent import Agent, AgentConfig

    root = tmp_path_factory.mktemp("metrics-agent")
    model_dir = make_model_dir(make_linear_softmax(root / "lin.onnx"), root / "lin", name="lin")
    keys = {
        "model_dir": model_dir,
        "endpoint": f"ipc://{root}/agent.sock",
        "data_dir": root / "data",
        "http_port": 0,
        "device_id": "metrics-dev",
        "threshold": 0.0,
    }
    if hasattr(AgentConfig, "from_keys"):  # the sectioned config: the same keys by section
        cfg = AgentConfig.from_keys(
            {
                "trust.allow_unsigned": True,
                "model.dir": keys["model_dir"],
                "server.endpoint": keys["endpoint"],
                "hard_examples.data_dir": keys["data_dir"],
                "health.http_port": 0,
                "server.device_id": keys["device_id"],
                "policy.threshold": 0.0,
            }
        )
    else:
        cfg = AgentConfig(**keys)
    with Agent(cfg) as running:
        yield running


def test_agent_metrics_pass_promtool_with_build_and_model_info(agent):
    from tandem.edge_agent import AgentClient

    with AgentClient(agent.endpoint) as client:
        client.infer({"x": np.ones((1, 4), np.float32)})
    text = httpx.get(agent.health_url + "/metrics").text
    assert promtool_problems(text) == ""
    assert 'tandem_agent_model_info{model="lin",version="1.0.0",variant="ort-fp32"} 1' in text
    served = 'model="lin",version="1.0.0",variant="ort-fp32"'
    for family in ("tandem_agent_requests_total", "tandem_agent_request_seconds", "tandem_agent_fallback_total"):
        lines = [ln for ln in text.splitlines() if ln.startswith(family) and not ln.startswith("#")]
        assert lines and all(served in ln for ln in lines), (family, lines)  # per-model series say which model
    assert "tandem_agent_build_info{" in text and "process_cpu_seconds_total" in text
    for counter in (
        "tandem_agent_batches_total",
        "tandem_agent_inline_runs_total",
        "tandem_agent_model_swaps_total",
        "tandem_agent_hard_examples_dropped_total",
    ):
        assert f"# TYPE {counter} counter" in text, counter
    answer = httpx.get(agent.health_url + "/metrics", headers={"Accept": OPENMETRICS_ACCEPT})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert "# TYPE tandem_agent_requests counter" in answer.text and answer.text.endswith("# EOF\n")
    _check_openmetrics(answer.text)
