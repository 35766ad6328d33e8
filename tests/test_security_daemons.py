"""Mutual TLS through the daemons' own configs: `tandem-hub pki` files -> HubConfig.tls_dir and AgentConfig telemetry.mqtt_tls_*.

A real Hub started with tls_dir runs its own Mosquitto with the TLS listener and the fleet ACL, its
telemetry, presence, hard-example and rollout clients on mqtts:// as the hub identity, and gRPC inference
demanding device certificates. A real Agent holding dev-a's files streams telemetry and falls back to the
cloud model; an agent without a certificate gets neither.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from agent_fixtures import make_model_dir
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import ConfigError
from tandem.edge_agent import Agent, AgentClient, AgentConfig
from telemetry_fixtures import MOSQUITTO
from waiting import wait_for

needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")


def _pki(root: Path, *devices: str) -> Path:
    """The operator's steps, through the CLI: `tandem-hub pki init`, then `pki issue DEVICE`."""
    from tandem.cloud_hub.cli import main

    folder = root / "pki"
    assert main(["pki", "init", "--dir", str(folder)]) == 0
    for device in devices:
        assert main(["pki", "issue", device, "--dir", str(folder)]) == 0
    return folder


def test_tls_dir_comes_from_env_or_flag_and_refuses_a_plain_broker_url(tmp_path):
    assert HubConfig.load(env={"TANDEM_HUB_TLS_DIR": str(tmp_path)}).tls_dir == tmp_path
    assert HubConfig.load(env={}, overrides={"tls_dir": tmp_path}).tls_dir == tmp_path
    assert HubConfig.load(env={}).tls_dir is None
    with pytest.raises(ConfigError, match="mqtt.url .* must be mqtts:// with tls_dir"):
        HubConfig.from_keys({"tls_dir": tmp_path, "mqtt.url": "mqtt://127.0.0.1:1883"})


def test_a_tls_dir_without_a_ca_stops_the_hub_naming_the_setting(tmp_path):
    from tandem.cloud_hub.hub import Hub

    hub = Hub(HubConfig.from_keys({"data_dir": tmp_path / "hub", "http.port": 0, "tls_dir": tmp_path / "empty"}))
    with pytest.raises(ConfigError, match=r"tls_dir \(env TANDEM_HUB_TLS_DIR\): .* no CA here"):
        hub.start(http=False)
    hub.stop()


def test_agent_fallback_uses_the_devices_mqtt_identity(tmp_path):
    files = {k: tmp_path / f"{k}.pem" for k in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("x")
    tls = {
        "telemetry.mqtt_url": "mqtts://127.0.0.1:8883",
        "telemetry.mqtt_tls_ca": files["ca"],
        "telemetry.mqtt_tls_cert": files["cert"],
        "telemetry.mqtt_tls_key": files["key"],
    }
    cfg = AgentConfig.from_keys(
        {"trust.allow_unsigned": True, "model.dir": tmp_path, "fallback.hub_url": "127.0.0.1:8001", **tls}
    ).validate()
    assert cfg.fallback_tls == cfg.telemetry.tls and cfg.fallback_tls.cert == files["cert"]
    assert (
        AgentConfig.from_keys({"trust.allow_unsigned": True, "model.dir": tmp_path, **tls}).fallback_tls is None
    )  # no hub_url: no fallback
    assert (
        AgentConfig.from_keys(
            {"trust.allow_unsigned": True, "model.dir": tmp_path, "fallback.hub_url": "127.0.0.1:8001"}
        ).fallback_tls
        is None
    )  # plain text


@pytest.fixture(scope="module")
def tls_hub(digits_dir, tmp_path_factory):
    from tandem.cloud_hub.hub import Hub

    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    root = tmp_path_factory.mktemp("tls-hub")
    pki = _pki(root, "dev-a")
    models = root / "models"
    edge = make_model_dir(digits_dir / "edge.onnx", models / "edge", name="digits")
    cloud = make_model_dir(digits_dir / "cloud.onnx", models / "cloud", name="digits-cloud")
    hub = Hub(
        HubConfig.from_keys(
            {
                "data_dir": root / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "models.dirs": (cloud,),
                "tls_dir": pki,
                "rollouts.tick_s": 0.1,
            }
        )
    )
    try:
        hub.start()
        assert hub.mqtt_url.startswith("mqtts://") and hub.broker_kind == "mosquitto"
        assert hub.telemetry.ingest.wait_subscribed(15), "the hub's own client could not connect over mutual TLS"
        assert hub.hard_examples.wait_subscribed(10) and hub.rollouts.wait_subscribed(10)
        hub.test_pki, hub.test_edge = pki, edge
        yield hub
    finally:
        hub.stop()


def _agent_config(hub, tmp_path: Path, device_id: str, *, cert: bool) -> AgentConfig:
    folder = hub.test_pki / "devices" / "dev-a"
    identity = (
        {"telemetry.mqtt_tls_cert": folder / "client.crt", "telemetry.mqtt_tls_key": folder / "client.key"}
        if cert
        else {}
    )
    return AgentConfig.from_keys(
        {
            "trust.allow_unsigned": True,
            "model.dir": hub.test_edge,
            "server.endpoint": f"ipc://{tmp_path}/{device_id}.sock",
            "hard_examples.data_dir": tmp_path / device_id,
            "server.device_id": device_id,
            "server.tags": {"site": "secure"},
            "telemetry.mqtt_url": hub.mqtt_url,
            "telemetry.mqtt_tls_ca": folder / "ca.crt",
            "telemetry.window_s": 0.3,
            "fallback.hub_url": f"127.0.0.1:{hub.grpc_port}",
            "fallback.hub_model": "digits-cloud",
            "fallback.deadline_ms": 2000,
            **identity,
        }
    )


def _inputs(digits_dir: Path) -> np.ndarray:
    return np.load(digits_dir / "test.npz")["x"].astype(np.float32)


@pytest.mark.slow
@needs_mosquitto
def test_a_device_with_its_certificate_streams_telemetry_and_falls_back_over_mutual_tls(tls_hub, digits_dir, tmp_path):
    from tandem.cloud_hub.presence import wait_registered

    x = _inputs(digits_dir)
    with Agent(_agent_config(tls_hub, tmp_path, "dev-a", cert=True)) as agent, AgentClient(agent.endpoint) as client:
        answers = [client.infer(x[i : i + 1], threshold=1.0) for i in range(5)]  # nothing is that sure: ask the hub
        assert [a.source for a in answers] == ["cloud"] * 5, [a.detail for a in answers]
        assert wait_registered(tls_hub.devices, "dev-a", 15)
        assert tls_hub.devices.get("dev-a").tags == {"site": "secure"}
        agent.telemetry.flush()
        assert wait_for(lambda: sum(r["cloud"] for r in tls_hub.telemetry.store.device_windows("dev-a")) == 5, 15)


@pytest.mark.slow
@needs_mosquitto
def test_an_agent_without_a_certificate_is_refused_on_mqtt_and_on_grpc(tls_hub, digits_dir, tmp_path):
    import paho.mqtt.client as mqtt

    from tandem.protocols.topics import parse_mqtt_url

    cfg = _agent_config(tls_hub, tmp_path, "dev-b", cert=False)
    x = _inputs(digits_dir)
    with Agent(cfg) as agent, AgentClient(agent.endpoint) as client:
        answer = client.infer(x[:1], threshold=1.0)
        assert answer.source == "edge-degraded", answer.detail  # the hub's gRPC handshake wants a certificate
        # MQTT: the same trust and no identity, from a client we can watch: the broker ends every attempt
        outcome: list[str] = []
        done = threading.Event()
        probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        probe.tls_set_context(cfg.telemetry.tls.client_context())
        probe.on_connect = lambda c, u, f, rc, p=None: (outcome.append(f"connect {rc}"), done.set())
        probe.on_disconnect = lambda c, u, f, rc, p=None: (outcome.append(f"disconnect {rc}"), done.set())
        try:
            probe.connect(*parse_mqtt_url(cfg.telemetry.mqtt_url))
            probe.loop_start()
            assert done.wait(15)
        except OSError as exc:  # refused during the handshake itself
            outcome.append(f"error {exc}")
        finally:
            probe.loop_stop()
        assert not any(o == "connect Success" for o in outcome), outcome
        assert agent.telemetry.publisher.connects == 0 and not agent.telemetry.publisher.connected
    assert not tls_hub.devices.exists("dev-b")


def _serve_output(data_dir: Path, *extra: str) -> tuple[str, str]:
    """Run `tandem-hub serve` until it has printed its URLs, stop it with SIGTERM; (stdout, stderr)."""
    import signal
    import subprocess
    import sys

    from telemetry_fixtures import python_env

    cmd = [
        sys.executable,
        "-m",
        "tandem.cloud_hub.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--no-telemetry",
        "--no-rollouts",
        "--log-level",
        "ERROR",
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda s=s, d=d: d.extend(s), daemon=True)
        for s, d in ((proc.stdout, out), (proc.stderr, err))
    ]
    for reader in readers:
        reader.start()
    try:
        assert wait_for(lambda: any("no API tokens" in line for line in out) or proc.poll() is not None, 60), out + err
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        for reader in readers:
            reader.join(5)
    return "".join(out), "".join(err)


@pytest.mark.slow
@needs_mosquitto
def test_serve_warns_loudly_in_plain_text_and_runs_mqtts_with_tls_dir(tmp_path):
    out, err = _serve_output(tmp_path / "plain")
    assert "WARNING: PLAIN TEXT, development only" in err and "mqtt://" in out, (out, err)
    pki = _pki(tmp_path)
    out, err = _serve_output(tmp_path / "tls", "--tls-dir", str(pki))
    assert "PLAIN TEXT" not in err and "mqtts://127.0.0.1:" in out and f"mutual TLS from {pki}" in out, (out, err)
