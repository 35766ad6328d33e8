"""Serving modes and the fallback budget on a real agent with a real hub (v2 gRPC on loopback, digits models)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import numpy as np
import pytest

from agent_fixtures import digits_edge_and_cloud, free_port, outbox_windows
from waiting import wait_for
from tandem.cloud_hub.inference import InferenceServer
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from tandem.edge_agent.errors import ConfigError
from tandem.edge_agent.modes import BUDGET_REASON
from tandem.hardware_profiles.runtimes import load_session

# The hub deadline only bounds a hang here: these tests need the hub's answers (cloud, shadow), and on
# a loaded 2-core machine a call (the first one also connects) was seen taking more than 150 ms, which
# turned a cloud answer into edge-degraded. The black-hole test sets its own deadline.
DEADLINE_MS = 30_000


@pytest.fixture(scope="module")
def models(digits_dir, tmp_path_factory):
    return digits_edge_and_cloud(digits_dir, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def hub(models):
    server = InferenceServer(models[1])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def test_x(digits_dir):
    return np.load(digits_dir / "test.npz")["x"].astype(np.float32)


def config(models, tmp_path, hub_url: str, device_id: str, extra: dict | None = None) -> AgentConfig:
    return AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": models[0],
            "server.endpoint": f"ipc://{tmp_path}/agent.sock",
            "hard_examples.data_dir": tmp_path / "data",
            "fallback.hub_url": hub_url,
            "fallback.hub_model": "digits-cloud",
            "fallback.deadline_ms": DEADLINE_MS,
            "server.device_id": device_id,
            "health.http_port": 0,
            **(extra or {}),
        }
    )


def hub_calls(hub, device_id: str) -> int:
    return hub.stats().by_device.get(device_id, 0)


def metrics_text(agent: Agent) -> str:
    return urllib.request.urlopen(agent.health_url + "/metrics", timeout=5).read().decode()


def one_window(agent: Agent):
    """The agent's open telemetry window, closed and read back from its on-disk outbox (no broker needed)."""
    [window] = outbox_windows(agent)
    return window


def windows_with_shadow_samples(agent: Agent, samples: int) -> list:
    """The agent's windows read back from its outbox, flushed until they hold `samples` shadow samples (10 s at most).

    A shadow call counts in the agent's metrics first and in its telemetry window just after, on the
    fallback thread: waiting on the metrics alone leaves the last sample racing the flush on a loaded host."""
    windows: list = []

    def counted() -> bool:
        windows[:] = outbox_windows(agent)  # a window holding nothing is not stored: no empty ones are added
        return sum(w.shadow_samples for w in windows) >= samples

    wait_for(counted, 10)
    return windows


def test_edge_only_never_calls_the_hub_even_when_unsure(models, hub, test_x, tmp_path):
    with (
        Agent(config(models, tmp_path, hub.address, "edge-only-1", {"mode.default": "edge-only"})) as agent,
        AgentClient(agent.endpoint) as client,
    ):
        for i in range(10):
            answer = client.infer(test_x[i : i + 1], threshold=1.0)  # nothing is that confident
            assert answer.source == "edge" and answer.detail == ""
        assert agent.metrics.fallback_attempts == 0
        lb = ",".join(f'{k}="{v}"' for k, v in agent.metrics.current.labels.items())  # model, version, variant
        assert f'tandem_agent_mode_decisions_total{{{lb},decision="edge"}} 10' in metrics_text(agent)
    assert hub_calls(hub, "edge-only-1") == 0


def test_cloud_only_always_answers_from_the_cloud_and_degrades_when_the_hub_is_down(models, hub, test_x, tmp_path):
    cloud = load_session("onnxruntime", models[1] / "variants" / "ort-fp32.onnx")
    with (
        Agent(config(models, tmp_path, hub.address, "cloud-only-1", {"mode.default": "cloud-only"})) as agent,
        AgentClient(agent.endpoint) as client,
    ):
        for i in range(10):
            x = test_x[i : i + 1]
            answer = client.infer(x, threshold=0.0)  # confident, and still the cloud's answer
            assert answer.source == "cloud", answer.detail
            assert answer.labels == [int(np.argmax(cloud.run({"input": x})[0]))]
        assert client.infer(test_x[:1], mode="edge").source == "edge"  # the request's own mode wins
    assert hub_calls(hub, "cloud-only-1") == 10
    down = config(models, tmp_path / "down", f"127.0.0.1:{free_port()}", "cloud-only-2", {"mode.default": "cloud-only"})
    with Agent(down) as agent, AgentClient(agent.endpoint) as client:
        answer = client.infer(test_x[:1], threshold=0.0)
        assert answer.source == "edge-degraded" and answer.detail.startswith("hub unavailable")
        assert len(answer.labels) == 1  # the edge model still answered


def test_shadow_answers_on_the_edge_and_reports_agreement_with_the_cloud(models, hub, test_x, tmp_path):
    n = 30
    cfg = config(
        models,
        tmp_path,
        hub.address,
        "shadow-1",
        {
            "mode.default": "shadow",
            "mode.shadow_sample_rate": 1.0,
            "telemetry.mqtt_url": f"mqtt://127.0.0.1:{free_port()}",
            "telemetry.window_s": 3600,
        },
    )  # windows wait on disk
    edge = load_session("onnxruntime", models[0] / "variants" / "ort-fp32.onnx")
    cloud = load_session("onnxruntime", models[1] / "variants" / "ort-fp32.onnx")
    x = test_x[:n]
    want_agree = int((np.argmax(edge.run({"input": x})[0], 1) == np.argmax(cloud.run({"input": x})[0], 1)).sum())
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        m = agent.metrics
        for i in range(n):
            answer = client.infer(x[i : i + 1], threshold=1.0)  # unsure: shadow still serves the edge answer
            assert answer.source == "edge" and answer.detail == ""
            # one shadow call at a time, so none is skipped for too many in flight
            deadline = time.monotonic() + 10
            while m.shadow_samples + m.shadow_failed + m.shadow_skipped <= i and time.monotonic() < deadline:
                time.sleep(0.005)
        assert (m.shadow_samples, m.shadow_failed, m.shadow_skipped) == (n, 0, 0)
        assert agent.metrics.shadow_agree == want_agree
        text = metrics_text(agent)
        lb = ",".join(f'{k}="{v}"' for k, v in agent.metrics.current.labels.items())  # model, version, variant
        assert f"tandem_agent_shadow_samples_total{{{lb}}} {n}" in text
        assert f"tandem_agent_shadow_agreement_ratio{{{lb}}} {want_agree / n:.6f}" in text
        assert f'tandem_agent_mode_decisions_total{{{lb},decision="shadow"}} {n}' in text
        windows = windows_with_shadow_samples(agent, n)
    samples, agree = sum(w.shadow_samples for w in windows), sum(w.shadow_agree for w in windows)
    assert (samples, agree, sum(w.requests.edge for w in windows)) == (n, want_agree, n)
    assert hub_calls(hub, "shadow-1") == n


def test_shadow_never_waits_for_a_hub_that_does_not_answer(models, test_x, tmp_path):
    with socket.socket() as black_hole:  # accepts TCP, never speaks HTTP/2: every call runs into the deadline
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        # a 1 s deadline: a shadow call on the request path would cost all of it, far above a
        # loaded machine's noise (the bound below leaves half of it as margin)
        deadline_ms = 1000
        cfg = config(
            models,
            tmp_path,
            "127.0.0.1:%d" % black_hole.getsockname()[1],
            "shadow-2",
            {
                "mode.default": "shadow",
                "mode.shadow_sample_rate": 1.0,
                "fallback.breaker_failures": 100,
                "fallback.deadline_ms": deadline_ms,
            },
        )
        with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
            for i in range(8):
                answer = client.infer(test_x[i : i + 1], threshold=1.0)
                assert answer.source == "edge"
                assert answer.latency_ms < deadline_ms / 2, answer.latency_ms
            deadline = time.monotonic() + 8 * deadline_ms / 1000 + 10  # even if every shadow call ran its deadline
            lost = lambda: agent.metrics.shadow_failed + agent.metrics.shadow_skipped  # noqa: E731
            while lost() < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lost() == 8 and agent.metrics.shadow_samples == 0


def test_spent_budget_answers_edge_degraded_with_the_reason(models, hub, test_x, tmp_path):
    n = 20
    # inline_max_us: from the second request on, the model runs on the loop thread (the path that must
    # decide, and so spend the budget, once per request like the worker path)
    cfg = config(
        models,
        tmp_path,
        hub.address,
        "budget-1",
        {
            "mode.budget_rps": 2,
            "mode.budget_burst": 2,
            "batch.inline_max_us": 1e6,
            "telemetry.mqtt_url": f"mqtt://127.0.0.1:{free_port()}",
            "telemetry.window_s": 3600,
        },
    )
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        t0 = time.monotonic()
        answers = [client.infer(test_x[i : i + 1], threshold=1.0) for i in range(n)]  # all unsure
        elapsed = time.monotonic() - t0
        seen = (elapsed, [(a.source, a.detail) for a in answers])
        spent = [a for a in answers if a.detail.startswith(BUDGET_REASON)]
        asked = [a for a in answers if not a.detail.startswith(BUDGET_REASON)]  # cloud, or a hub failure
        cloud = [a for a in asked if a.source == "cloud"]
        assert 2 <= len(asked) <= 2 + 2 * elapsed + 1e-9 and cloud, seen
        assert all(a.source == "edge-degraded" and "2 hub requests/s (burst 2)" in a.detail for a in spent), seen
        assert sum(agent.metrics.decisions.values()) == n  # one decision per request
        text = metrics_text(agent)
        lb = ",".join(f'{k}="{v}"' for k, v in agent.metrics.current.labels.items())  # model, version, variant
        assert f'tandem_agent_mode_decisions_total{{{lb},decision="budget-spent"}} {len(spent)}' in text
        assert "tandem_agent_budget_request_tokens" in text
        health = json.loads(urllib.request.urlopen(agent.health_url + "/healthz", timeout=5).read())
        assert health["mode"]["mode"] == "hybrid" and health["mode"]["budget"]["spent"]["requests"] == len(spent)
        window = one_window(agent)
    assert len(cloud) <= hub_calls(hub, "budget-1") <= len(asked)
    assert window.budget_spent == len(spent) == n - len(asked)


def test_mode_keys_live_in_their_own_section_and_bad_values_name_the_key(models, tmp_path):
    cfg = AgentConfig.from_mapping(
        {
            "model": {"dir": str(models[0])},
            "mode": {
                "default": "shadow",
                "shadow_sample_rate": 0.5,
                "budget_rps": 5,
                "budget_burst": 10,
                "budget_bytes_per_hour": 1_000_000,
            },
        },
        env={},
    )
    mode = cfg.mode
    assert (mode.default, mode.shadow_sample_rate, mode.budget_rps, mode.budget_burst) == ("shadow", 0.5, 5.0, 10.0)
    assert mode.fallback_budget().bytes_per_hour == 1_000_000
    env = {"TANDEM_AGENT_MODEL_DIR": str(models[0])}
    for key, value, message in (
        ("default", "cloud", "mode.default: 'cloud' is not one of edge-only"),
        ("shadow_sample_rate", 1.5, "mode.shadow_sample_rate"),
        ("budget_rps", -1, "mode.budget_rps"),
        ("budget_bytes_per_hour", 0, "mode.budget_bytes_per_hour"),
    ):
        with pytest.raises(ConfigError, match=message):
            AgentConfig.from_mapping({"mode": {key: value}}, env=env)
    with pytest.raises(ConfigError, match="mode.budget_burst: needs budget_rps"):
        AgentConfig.from_mapping({"mode": {"budget_burst": 3}}, env=env)
    assert (
        AgentConfig.from_mapping({}, env={**env, "TANDEM_AGENT_MODE_DEFAULT": "edge-only"}).mode.default == "edge-only"
    )
    with pytest.raises(ConfigError, match=r"mode\.budget_rps \(from TANDEM_AGENT_MODE_BUDGET_RPS\): expected a number"):
        AgentConfig.from_mapping({}, env={**env, "TANDEM_AGENT_MODE_BUDGET_RPS": "fast"})


class _SlowHub:
    """A v2 gRPC hub that answers ModelInfer `delay_s` late, by forwarding to a real one (a slow link)."""

    def __init__(self, real_address: str, delay_s: float) -> None:
        from concurrent import futures

        import grpc

        from tandem.protocols import inference_pb2_grpc as pb_grpc

        channel = grpc.insecure_channel(real_address)
        real = pb_grpc.GRPCInferenceServiceStub(channel)

        class Servicer(pb_grpc.GRPCInferenceServiceServicer):
            def ServerReady(self, request, context):  # noqa: N802 - the v2 method name
                return real.ServerReady(request, timeout=10)

            def ModelInfer(self, request, context):  # noqa: N802
                time.sleep(delay_s)
                return real.ModelInfer(request, timeout=10)

        self.channel = channel
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(0)
        self.channel.close()


def test_a_shadow_call_running_at_stop_lands_in_the_last_telemetry_window(models, hub, test_x, tmp_path):
    from tandem.edge_agent.telemetry.outbox import Outbox
    from tandem.edge_agent.telemetry.service import OUTBOX_FILENAME
    from tandem.protocols import topics
    from tandem.protocols.telemetry_codec import decode_window

    slow = _SlowHub(hub.address, delay_s=0.6)
    try:
        cfg = config(
            models,
            tmp_path,
            slow.address,
            "shadow-stop",
            {
                "mode.default": "shadow",
                "mode.shadow_sample_rate": 1.0,
                "fallback.deadline_ms": 5000,
                "telemetry.mqtt_url": f"mqtt://127.0.0.1:{free_port()}",  # no broker: windows wait on disk
                "telemetry.window_s": 3600,
            },
        )
        agent = Agent(cfg).start()
        try:
            with AgentClient(agent.endpoint) as client:
                assert client.infer(test_x[:1], threshold=1.0).source == "edge"  # its shadow call takes 0.6 s
            assert agent.metrics.shadow_samples == 0  # still running when the agent is told to stop
        finally:
            agent.stop()
        assert agent.metrics.shadow_samples == 1  # the stop waited for it
    finally:
        slow.close()
    [path] = list(tmp_path.rglob(OUTBOX_FILENAME))
    box = Outbox(path)
    try:
        windows = [decode_window(p.payload) for p in box.next_batch() if p.kind == topics.TELEMETRY]
    finally:
        box.close()
    assert sum(w.shadow_samples for w in windows) == 1  # with telemetry stopped first: 0, though the metrics said 1
    assert sum(w.requests.edge for w in windows) == 1
