"""The real agent daemon streams telemetry to a real hub and takes OTA updates from it.

Agents run in-process (`Agent(config).start()`) with their real ZeroMQ API, A/B store,
OTA client and telemetry outbox; the hub is the real Hub with telemetry ingestion and
rollouts on a real Mosquitto. A client thread keeps sending requests through every switch.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from agent_fixtures import make_model_dir, outbox_windows
from agent_load import Load, version_runs
from tandem.edge_agent import Agent, AgentConfig
from tandem.edge_agent.errors import ConfigError
from tandem.edge_agent.observe import RequestObserver
from ota_fixtures import MODEL, MOSQUITTO, PROFILE, Broker, ota_hub, releases
from waiting import wait_for

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")
WATCH_S = 1.0
GATES = {"min_reporting": 1.0, "wave_timeout_s": 60, "max_latency_ratio": 100.0}


def _inputs(digits_dir: Path) -> np.ndarray:
    x = np.load(digits_dir / "test.npz")
    return x[x.files[0]].astype(np.float32)


def _healthz(agent: Agent) -> dict:
    with urllib.request.urlopen(agent.health_url + "/healthz", timeout=5) as resp:
        return json.loads(resp.read())


# -- no broker: configuration, the observer, and a hot swap under load ------------------------------


def test_new_config_sections_are_validated_naming_the_key(tmp_path):
    base = {"model": {"dir": str(tmp_path)}}
    cases = [
        ({"ota": {"enabled": True}}, "ota.enabled: OTA needs the hub's broker"),
        ({"telemetry": {"mqtt_url": "mqtt://127.0.0.1:1883"}, "ota": {"enabled": True}}, "ota.trusted_key"),
        (
            {
                "telemetry": {"mqtt_url": "mqtt://127.0.0.1:1883"},
                "ota": {"enabled": True, "trusted_key": str(tmp_path / "missing.pem")},
            },
            "not a readable file",
        ),
        ({"telemetry": {"mqtt_url": "http://hub:1883"}}, "telemetry.mqtt_url"),
        ({"telemetry": {"window_s": 0}}, "telemetry.window_s"),
        ({"ota": {"max_fallback_rise": 2}}, "ota.max_fallback_rise"),
        ({"server": {"tags": {"bad key": "x"}}}, "server.tags: key 'bad key'"),
        ({"server": {"tags": "site"}}, "server.tags: expected a table"),
        ({"server": {"device_id": "a/b"}}, "server.device_id"),
        ({"telemetry": {"bogus": 1}}, "telemetry.bogus: unknown key"),
        ({"telemetry": {"mqtt_url": "mqtts://hub:8883"}}, "telemetry.mqtt_tls_ca: mqtts://hub:8883 is mqtts://"),
        (
            {"telemetry": {"mqtt_url": "mqtt://hub:1883", "mqtt_tls_ca": str(tmp_path / "ca.crt")}},
            "telemetry.mqtt_url: .* use mqtts://",
        ),
        (
            {"telemetry": {"mqtt_url": "mqtts://hub:8883", "mqtt_tls_ca": str(tmp_path / "ca.crt")}},
            "telemetry.mqtt_tls_ca: .* is not a readable file",
        ),
        (
            {
                "telemetry": {
                    "mqtt_url": "mqtts://hub:8883",
                    "mqtt_tls_ca": str(tmp_path / "ca.crt"),
                    "mqtt_tls_cert": str(tmp_path / "c.crt"),
                }
            },
            "give both mqtt_tls_cert and mqtt_tls_key",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            AgentConfig.from_mapping({**base, **extra}, env={})
    cfg = AgentConfig.from_mapping(
        {**base, "telemetry": {"mqtt_url": "mqtt://127.0.0.1:1883"}},
        env={
            "TANDEM_AGENT_SERVER_TAGS": "site=lab, line=2",
            "TANDEM_AGENT_TELEMETRY_WINDOW_S": "2.5",
            "TANDEM_AGENT_TELEMETRY_ENABLED": "false",
        },
    )
    assert cfg.server.tags == {"site": "lab", "line": "2"} and cfg.telemetry.window_s == 2.5
    assert not cfg.telemetry_on and cfg.model_store_dir == cfg.hard_examples.data_dir / "models"
    assert not AgentConfig.from_keys(
        {"trust.allow_unsigned": True, "model.dir": tmp_path}
    ).telemetry_on  # no broker: edge-only


def test_example_config_loads(tmp_path):
    cfg = AgentConfig.load(Path(__file__).resolve().parents[1] / "examples" / "agent" / "agent.toml", env={})
    # the example runs edge-only as shipped (the README tour's first agent): no broker, no hub, tags set;
    # `tandem-agent init` writes the joined configuration with telemetry and OTA on
    assert cfg.telemetry.mqtt_url is None and not cfg.telemetry_on and cfg.server.tags
    assert not cfg.ota.enabled  # turned on once the release key is in place


def test_observer_reports_figures_since_the_previous_probe():
    obs = RequestObserver()
    conf, labels = np.array([0.9], np.float32), np.array([1])
    for i in range(10):
        obs.answered("edge", 0.001 * (i + 1), conf, labels, None, unsure=i < 3)
    obs.failed(0.02)
    first = obs.take_health()
    assert (first.requests, first.errors, first.fallbacks) == (11, 1, 3)
    assert 10.0 <= first.latency_p95_ms <= 20.0
    assert obs.take_health().requests == 0 and obs.take_health().latency_p95_ms is None


@pytest.fixture(scope="module")
def two_versions(digits_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("swap-models")
    return (
        make_model_dir(digits_dir / "edge.onnx", root / "v1", version="1.0.0"),
        make_model_dir(digits_dir / "edge.onnx", root / "v2", version="1.1.0"),
    )


@pytest.mark.parametrize("inline_max_us", [200.0, 0.0], ids=["inline", "worker"])
def test_hot_swap_under_load_drops_no_request_and_flips_once(two_versions, digits_dir, tmp_path, inline_max_us):
    """Requests keep coming from 8 clients; on the worker path some wait in the old batcher's queue at the flip."""
    v1, v2 = two_versions
    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": v1,
            "server.endpoint": f"ipc://{tmp_path}/swap.sock",
            "hard_examples.data_dir": tmp_path / "data",
            "server.device_id": "swap-dev",
            "policy.threshold": 0.5,
            "batch.inline_max_us": inline_max_us,
            "batch.solo_inline_max_us": inline_max_us * 100,
        }
    )  # worker: no solo inline runs either
    inputs = _inputs(digits_dir)
    with Agent(cfg) as agent:
        loads = [Load(agent.endpoint, inputs[i::8], pause_s=0.0).start() for i in range(8)]
        try:
            assert all(load.wait_answers(30) for load in loads)
            old_batcher = agent.batcher
            agent._on_switch(v2)
            assert agent.model.version == "1.1.0" and agent.batcher is not old_batcher
            assert all(load.wait_answers(len(load.versions) + 30) for load in loads)
        finally:
            for load in loads:
                load.stop()
        assert agent.swaps == 1
    for load in loads:
        assert load.failures == []
        assert [v for v, _ in version_runs(load.versions)] == ["1.0.0", "1.1.0"]


# -- a real hub and broker ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ota_releases(digits_dir, tmp_path_factory) -> dict[str, Path]:
    return releases(digits_dir, lambda: tmp_path_factory.mktemp("ota-releases"))


@pytest.fixture(scope="module")
def hub_env(ota_releases, tmp_path_factory):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    root = tmp_path_factory.mktemp("agent-hub")
    with ota_hub(root, ota_releases.values(), rollouts={"tick_s": 0.1, "watch_s": WATCH_S}) as env:
        yield SimpleNamespace(**vars(env), telemetry=env.hub.telemetry, releases=ota_releases)


def _agent(env: SimpleNamespace, device_id: str, ring: str, tmp_path: Path, overrides: dict | None = None) -> Agent:
    env.hub.devices.register(device_id, PROFILE, "test", {"ring": ring})
    values = {
        "trust.allow_unsigned": True,
        "model.dir": env.releases["1.0.0"],
        "model.profile": PROFILE,
        "server.endpoint": f"ipc://{tmp_path}/{device_id}.sock",
        "server.device_id": device_id,
        "server.tags": {"ring": ring},
        "policy.threshold": 0.5,
        "hard_examples.data_dir": tmp_path / device_id,
        "health.http_port": 0,
        "telemetry.mqtt_url": env.broker.url,
        "telemetry.window_s": 0.3,
        "ota.enabled": True,
        "ota.trusted_key": env.pem,
        "ota.hub_token": env.device_token,
        "ota.watch_s": WATCH_S,
        "ota.min_requests": 20,
        "ota.max_fallback_rise": 0.3,
        "ota.max_latency_ratio": 100.0,
    }  # latency loose: p95 ratios on two shared cores are noise
    values.update(overrides or {})
    return Agent(AgentConfig.from_keys(values)).start()


def _stored(env: SimpleNamespace, device_id: str) -> list[dict]:
    return env.telemetry.store.device_windows(device_id, limit=5000)


def _answered(rows: list[dict]) -> int:
    return sum(r["edge"] + r["cloud"] + r["edge_degraded"] + r["error"] for r in rows)


def _rollout(env: SimpleNamespace, version: str, ring: str) -> str:
    resp = env.http.post(
        "/v1/rollouts",
        json={
            "model": MODEL,
            "version": version,
            "waves": [100],
            "gates": GATES,
            "select": {"profile": PROFILE, "ring": ring},
        },
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["rollout_id"]


def _rollout_reaches(
    env: SimpleNamespace, rollout_id: str, statuses: tuple[str, ...], settle=lambda b: True, timeout_s: float = 60
) -> dict:
    body: dict = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = env.http.get(f"/v1/rollouts/{rollout_id}", params={"events": 200}).json()
        if body["status"] in statuses and settle(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"rollout {rollout_id} did not reach {statuses}: {body.get('status')} {body.get('reason')}")


@pytest.mark.slow
def test_windows_summarize_inputs_over_the_manifests_drift_edges_and_wait_on_disk_without_a_broker(
    ota_releases, digits_dir, tmp_path
):
    from telemetry_fixtures import free_port

    from tandem.edge_agent.client import AgentClient
    from tandem.protocols.telemetry_codec import window_to_dict

    cfg = AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": ota_releases["1.0.0"],
            "server.endpoint": f"ipc://{tmp_path}/d.sock",
            "hard_examples.data_dir": tmp_path / "d",
            "server.device_id": "no-broker",
            "server.tags": {"site": "lab"},
            "policy.threshold": 0.5,
            "telemetry.mqtt_url": f"mqtt://127.0.0.1:{free_port()}",
            "telemetry.window_s": 3600,
        }
    )  # nobody listens there
    inputs = _inputs(digits_dir)
    with Agent(cfg) as agent:
        with AgentClient(agent.endpoint) as client:
            for i in range(5):
                assert client.infer(inputs[i : i + 1]).model_version == "1.0.0"
            client.infer(inputs[5:8])  # one request, three rows
        [stored] = outbox_windows(agent)  # the one window (any hard examples moved in beside it are not windows)
    window = window_to_dict(stored)
    assert (window["device_id"], window["model_version"], window["tags"]) == ("no-broker", "1.0.0", {"site": "lab"})
    assert window["requests"]["edge"] == 6 and window["samples"] == 8
    reference = json.loads((ota_releases["1.0.0"] / "manifest.json").read_text())["drift_reference"]["inputs"]
    expected = {f"{name}.{summary}" for name, per in reference.items() for summary in per}
    assert set(window["inputs"]) == expected and all(sum(c) == 8 for c in window["inputs"].values())
    assert sum(window["confidence_counts"]) == 8 and sum(window["class_counts"]) == 8


@pytest.mark.slow
@needs_mosquitto
def test_agent_streams_windows_the_hub_stores_with_device_version_and_counts(hub_env, digits_dir, tmp_path):
    agent = _agent(hub_env, "agent-tel", "tel", tmp_path, {"ota.enabled": False})
    inputs = _inputs(digits_dir)
    try:
        from tandem.edge_agent.client import AgentClient

        with AgentClient(agent.endpoint) as client:
            for i in range(30):
                client.infer(inputs[i : i + 1])
            with pytest.raises(Exception, match="shape"):
                client.infer(np.zeros((1, 10), np.float32))  # an error reply is counted too
        assert wait_for(lambda: _answered(_stored(hub_env, "agent-tel")) >= 1, 15), "no window reached the hub"
        body = _healthz(agent)
        assert body["telemetry"]["connected"] and body["telemetry"]["model_version"] == "1.0.0"
        assert "outbox_depth" in body["telemetry"] and body["ota"] is None
    finally:
        agent.stop()  # closes the open window and waits for the broker to have it
    assert wait_for(lambda: _answered(_stored(hub_env, "agent-tel")) == 31, 15)
    rows = _stored(hub_env, "agent-tel")
    assert {(r["device_id"], r["model_name"], r["model_version"], r["profile"]) for r in rows} == {
        ("agent-tel", MODEL, "1.0.0", PROFILE)
    }
    assert sum(r["edge"] for r in rows) == 30 and sum(r["error"] for r in rows) == 1
    assert [r["sequence"] for r in rows] == list(range(1, len(rows) + 1))  # every window, in order, once


@pytest.mark.slow
@needs_mosquitto
def test_rollout_over_rest_moves_a_serving_agent_to_the_new_version_without_a_failed_request(
    hub_env, digits_dir, tmp_path
):
    agent = _agent(hub_env, "agent-swap", "swap", tmp_path)
    load = None
    try:
        assert agent.ota.wait_subscribed(10)
        assert _healthz(agent)["ota"]["active_version"] == "1.0.0"
        load = Load(agent.endpoint, _inputs(digits_dir)).start()
        assert load.wait_answers(50)
        rid = _rollout(hub_env, "1.1.0", "swap")
        body = _rollout_reaches(hub_env, rid, ("completed",))
        assert body["counts"] == {"committed": 1}
        assert load.wait_answers(len(load.versions) + 50)
        load.stop()
        health = _healthz(agent)
        assert health["version"] == "1.1.0" and health["swaps"] == 1
        assert health["ota"]["active_version"] == "1.1.0" and health["ota"]["previous_version"] == "1.0.0"
        assert health["ota"]["state"] == "committed" and not health["ota"]["on_trial"]
    finally:
        if load is not None:
            load.stop()
        agent.stop()
    assert load.failures == []
    runs = version_runs(load.versions)
    assert [v for v, _ in runs] == ["1.0.0", "1.1.0"], runs  # one switch, never back
    # telemetry: every answer is in exactly one stored window, under the version that gave it
    # (the window closes at the flip; a request already on the old batcher then may land in either)
    assert wait_for(lambda: _answered(_stored(hub_env, "agent-swap")) == len(load.versions), 15)
    rows = _stored(hub_env, "agent-swap")
    per_version = {v: sum(_answered([r]) for r in rows if r["model_version"] == v) for v in ("1.0.0", "1.1.0")}
    assert abs(per_version["1.1.0"] - runs[1][1]) <= 1 and sum(per_version.values()) == len(load.versions)
    assert hub_env.hub.devices.get("agent-swap").model_version == "1.1.0"
    # restarted with the same config (model_dir still 1.0.0), the agent serves what its store committed
    again = Agent(agent.config).start()
    try:
        assert again.model.version == "1.1.0" and again.ota.store.previous_version == "1.0.0"
    finally:
        again.stop()


@pytest.mark.slow
@needs_mosquitto
def test_collapsed_release_is_rolled_back_by_the_agents_health_watch(hub_env, digits_dir, tmp_path):
    agent = _agent(hub_env, "agent-bad", "bad", tmp_path)
    load = None
    try:
        assert agent.ota.wait_subscribed(10)
        load = Load(agent.endpoint, _inputs(digits_dir)).start()
        assert load.wait_answers(50)
        rid = _rollout(hub_env, "1.3.0", "bad")
        body = _rollout_reaches(
            hub_env, rid, ("halted",), settle=lambda b: all(d["state"] == "rolled_back" for d in b["device_states"])
        )
        assert "fallback rate" in body["device_states"][0]["reason"], body["device_states"]
        assert load.wait_answers(len(load.versions) + 50)
        load.stop()
        assert agent.model.version == "1.0.0"
        state = agent.ota.store.state
        # rolled back for health, not banned: the anti-rollback floor rises only on commit
        assert (state.active.version, state.previous, state.max_accepted) == ("1.0.0", None, "1.0.0")
        assert _healthz(agent)["ota"]["state"] == "rolled_back"
    finally:
        if load is not None:
            load.stop()
        agent.stop()
    assert load.failures == []
    runs = version_runs(load.versions)
    # served 1.3.0 during its trial, judged by its fallback rate, and went back to 1.0.0 for good
    assert [v for v, _ in runs] == ["1.0.0", "1.3.0", "1.0.0"], runs


@pytest.mark.slow
@needs_mosquitto
def test_cli_run_says_what_it_serves_and_status_shows_ota_and_telemetry(two_versions, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from telemetry_fixtures import free_port

    root = Path(__file__).resolve().parents[1]
    pem = tmp_path / "release.pem"
    pem.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    broker = Broker(tmp_path / "mosquitto")
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[model]\ndir = "{two_versions[0]}"\n[server]\nendpoint = "ipc://{tmp_path}/a.sock"\n'
        f'device_id = "cli-dev"\ntags = {{ site = "lab" }}\n[health]\nhttp_port = {port}\n'
        f'[hard_examples]\ndata_dir = "state"\n[telemetry]\nmqtt_url = "{broker.url}"\n'
        f'[ota]\nenabled = true\ntrusted_key = "release.pem"\n[trust]\nallow_unsigned = true\n'
    )
    cli = [sys.executable, "-m", "tandem.edge_agent.cli"]
    proc = subprocess.Popen(
        [*cli, "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env=dict(os.environ),
    )
    lines: list[str] = []

    def read_stderr() -> None:  # on a thread: the test never blocks on a pipe
        for text in proc.stderr:
            lines.append(text)

    threading.Thread(target=read_stderr, daemon=True).start()
    try:
        assert wait_for(lambda: any(x.startswith("tandem-agent:") for x in lines) or proc.poll() is not None, 60)
        line = next((x for x in lines if x.startswith("tandem-agent:")), "")
        assert "serving digits 1.0.0" in line and f"telemetry to {broker.url}" in line, "".join(lines)
        assert f"store {tmp_path / 'state' / 'models'}" in line, line
        done = None
        for _ in range(50):  # the health line says connected once the MQTT session is up
            done = subprocess.run(
                [*cli, "status", "--config", str(config)], capture_output=True, text=True, cwd=root, timeout=30
            )
            if "DISCONNECTED" not in done.stdout:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "device cli-dev serves digits 1.0.0" in done.stdout
        assert f"telemetry: {broker.url} connected, outbox 0 windows waiting" in done.stdout, done.stdout
        assert "ota: idle, active 1.0.0, previous -, highest accepted 1.0.0" in done.stdout, done.stdout
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "tandem_agent_telemetry_outbox_depth 0" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            broker.stop()


def _daemon(config: Path, lines: list[str]):
    """`tandem-agent run --config` as a child process; its stderr lines land in `lines` (read on a thread)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.edge_agent.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )

    def read_stderr() -> None:
        for text in proc.stderr:
            lines.append(text)

    threading.Thread(target=read_stderr, daemon=True).start()
    assert wait_for(lambda: any(x.startswith("tandem-agent:") for x in lines) or proc.poll() is not None, 60), lines
    assert proc.poll() is None, "".join(lines)
    return proc


@pytest.mark.slow
@needs_mosquitto
def test_daemon_killed_during_the_watch_restarts_into_the_complete_old_version(hub_env, digits_dir, tmp_path):
    import signal

    from tandem.edge_agent.client import AgentClient
    from telemetry_fixtures import free_port

    hub_env.hub.devices.register("agent-kill", PROFILE, "test", {"ring": "kill"})
    port = free_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[model]\ndir = "{hub_env.releases["1.0.0"]}"\n[server]\nendpoint = "ipc://{tmp_path}/k.sock"\n'
        f'device_id = "agent-kill"\ntags = {{ ring = "kill" }}\n[policy]\nthreshold = 0.5\n'
        f"[health]\nhttp_port = {port}\n"
        f'[hard_examples]\ndata_dir = "state"\n[telemetry]\nmqtt_url = "{hub_env.broker.url}"\n'
        f'[ota]\nenabled = true\ntrusted_key = "{hub_env.pem}"\nhub_token = "{hub_env.device_token}"\n'
        "[trust]\nallow_unsigned = true\n"
    )

    def ota() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return json.loads(resp.read())["ota"]

    lines: list[str] = []
    proc = _daemon(config, lines)
    relines: list[str] = []
    try:
        time.sleep(0.5)  # its OTA session subscribes
        rid = _rollout(hub_env, "1.1.0", "kill")
        assert wait_for(lambda: ota()["on_trial"], 30, step_s=0.01), f"never on trial: {ota()}"
        proc.send_signal(signal.SIGKILL)  # mid-watch: switched to 1.1.0, not committed
        proc.wait(10)
        restarted = _daemon(config, relines)
        try:
            state = ota()
            assert (state["active_version"], state["on_trial"], state["max_accepted"]) == ("1.0.0", False, "1.0.0")
            with AgentClient(f"ipc://{tmp_path}/k.sock") as client:
                answer = client.infer(_inputs(digits_dir)[:4])
            assert answer.model_version == "1.0.0" and len(answer.labels) == 4
            body = _rollout_reaches(hub_env, rid, ("halted",))
            assert "agent-kill: rolled_back: the agent restarted while this version was on trial" in body["reason"]
        finally:
            restarted.send_signal(signal.SIGTERM)
            assert restarted.wait(20) == 0, "".join(lines + ["--- restarted:\n"] + relines)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
@needs_mosquitto
def test_agent_telemetry_and_ota_connect_over_mutual_tls(two_versions, tmp_path):
    """mqtts:// with the device's certificate from `tandem-hub pki issue`, against a broker that requires it."""
    import subprocess

    from tandem.cloud_hub.broker import free_port, wait_for_port
    from tandem.cloud_hub.mqtt_security import MosquittoTlsConfig, write_mosquitto_config
    from tandem.cloud_hub.pki import Pki
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pki = Pki.init(tmp_path / "pki", ["hub.test"])
    files = pki.issue_device("tls-dev")
    port = free_port()
    conf = write_mosquitto_config(pki, MosquittoTlsConfig(tmp_path / "mq", port=port, persistence=False))
    broker = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    pem = tmp_path / "release.pem"
    pem.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    try:
        assert wait_for_port("127.0.0.1", port, 10, alive=lambda: broker.poll() is None)
        cfg = AgentConfig.from_keys(
            {
                "trust.allow_unsigned": True,
                "model.dir": two_versions[0],
                "server.endpoint": f"ipc://{tmp_path}/t.sock",
                "hard_examples.data_dir": tmp_path / "d",
                "server.device_id": "tls-dev",
                "telemetry.mqtt_url": f"mqtts://127.0.0.1:{port}",
                "telemetry.mqtt_tls_ca": files.ca,
                "telemetry.mqtt_tls_cert": files.cert,
                "telemetry.mqtt_tls_key": files.key,
                "ota.enabled": True,
                "ota.trusted_key": pem,
            }
        )
        with Agent(cfg) as agent:
            from tandem.edge_agent.client import AgentClient

            with AgentClient(agent.endpoint) as client:
                client.infer(np.zeros((1, 64), np.float32))
            assert agent.ota.wait_subscribed(10), "the OTA client never subscribed over TLS"
            agent.telemetry.flush()
            assert agent.telemetry.publisher.wait_drained(10), "the broker never acknowledged the window"
            assert agent.healthz()[1]["telemetry"]["connected"]
    finally:
        broker.terminate()
        broker.wait(10)
