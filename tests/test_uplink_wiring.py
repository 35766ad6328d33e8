"""The agent's uplink wired end to end: presence from its retained status, OTA status through the outbox.

A real Agent (ZeroMQ, A/B store, OTA client, telemetry outbox) against a Hub running its default services
(telemetry, presence, rollouts) on a real Mosquitto that the tests can stop and restart on the same port.
No device is registered by hand: the agent's retained /status is all the hub gets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tandem.edge_agent import Agent, AgentConfig
from ota_fixtures import MODEL, PROFILE, ota_hub, releases
from telemetry_fixtures import MOSQUITTO
from waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed")]
WATCH_S = 1.0
GATES = {"min_reporting": 1.0, "wave_timeout_s": 60, "max_latency_ratio": 100.0}


@pytest.fixture(scope="module")
def env(digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("uplink-wiring")
    built = releases(digits_dir, lambda: tmp_path_factory.mktemp("uplink-releases"))
    # persistence: a test restarts the broker, and the hub's persistent sessions must survive it
    with ota_hub(root, (built["1.0.0"], built["1.1.0"]), {"rollouts.tick_s": 0.1}, persistence=True) as hub_env:
        yield SimpleNamespace(**vars(hub_env), releases=built)


def _agent(env: SimpleNamespace, device_id: str, site: str, tmp_path: Path, overrides: dict | None = None) -> Agent:
    values = {
        "trust.allow_unsigned": True,
        "model.dir": env.releases["1.0.0"],
        "model.profile": PROFILE,
        "server.endpoint": f"ipc://{tmp_path}/{device_id}.sock",
        "server.device_id": device_id,
        "server.tags": {"site": site, "line": "2"},
        "policy.threshold": 0.5,
        "hard_examples.data_dir": tmp_path / device_id,
        "telemetry.mqtt_url": env.broker.url,
        "telemetry.window_s": 0.5,
        "ota.enabled": True,
        "ota.trusted_key": env.pem,
        "ota.hub_token": env.device_token,
        "ota.watch_s": WATCH_S,
        "ota.max_latency_ratio": 100.0,
    }
    values.update(overrides or {})
    return Agent(AgentConfig.from_keys(values)).start()


def _rollout(env: SimpleNamespace, version: str, site: str) -> str:
    resp = env.http.post(
        "/v1/rollouts",
        json={"model": MODEL, "version": version, "waves": [100], "gates": GATES, "select": {"site": site}},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["rollout_id"]


def _rollout_body(env: SimpleNamespace, rollout_id: str) -> dict:
    return env.http.get(f"/v1/rollouts/{rollout_id}", params={"events": 200}).json()


def _completes(env: SimpleNamespace, rollout_id: str, timeout_s: float = 60) -> dict:
    body: dict = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = _rollout_body(env, rollout_id)
        if body["status"] in ("completed", "halted", "aborted"):
            break
        time.sleep(0.1)
    assert body.get("status") == "completed", (body.get("status"), body.get("reason"), body.get("device_states"))
    return body


def test_agent_registers_from_its_status_alone_and_a_rollout_selected_by_tag_reaches_it(env, tmp_path):
    from tandem.cloud_hub.presence import wait_registered
    from tandem.edge_agent.telemetry.service import agent_version

    agent = _agent(env, "wired-a", "lab-a", tmp_path)
    try:
        assert wait_registered(env.hub.devices, "wired-a", 15), "the hub never registered the agent from MQTT"
        record = env.hub.devices.get("wired-a")
        assert record.tags == {"site": "lab-a", "line": "2"} and record.profile == PROFILE
        assert record.agent_version == agent_version() != "unknown"
        assert (record.model_name, record.model_version) == (MODEL, "1.0.0")
        assert agent.ota.wait_subscribed(10)
        body = _completes(env, _rollout(env, "1.1.0", "lab-a"))
        assert body["counts"] == {"committed": 1}
        assert agent.model.version == "1.1.0"
        # the retained status says the new version at once (not at the next reconnect)
        assert wait_for(lambda: env.hub.devices.get("wired-a").model_version == "1.1.0", 10)
        status = json.loads(_retained_status(env.broker.url, "wired-a"))
        assert (status["state"], status["version"], status["tags"]["site"]) == ("online", "1.1.0", "lab-a")
    finally:
        agent.stop()


def _retained_status(url: str, device_id: str, timeout_s: float = 10) -> bytes:
    """The broker's retained /status for `device_id`, read by a fresh subscriber."""
    import threading

    import paho.mqtt.client as mqtt

    from tandem.protocols.topics import parse_mqtt_url, status_topic

    got: list[bytes] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_connect = lambda c, *a: c.subscribe(status_topic(device_id), qos=1)

    def on_message(c, userdata, msg):
        got.append(msg.payload)
        done.set()

    client.on_message = on_message
    client.connect(*parse_mqtt_url(url))
    client.loop_start()
    try:
        assert done.wait(timeout_s), "no retained status"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def test_ota_status_made_while_the_broker_is_down_survives_a_restart_and_reaches_the_rollout(env, tmp_path):
    """The committed status is made during an outage, sits in outbox class 0 across an agent restart and,
    once the broker is back, is what completes the rollout (not a catch-up's 'already active' answer)."""
    from tandem.cloud_hub.presence import wait_registered
    from tandem.edge_agent.telemetry.outbox import STATUS

    agent = _agent(env, "wired-b", "lab-b", tmp_path, {"ota.watch_s": 5.0})
    again = None
    try:
        assert agent.telemetry.hard_examples is agent.hard_examples  # hard examples go out as class 1
        assert "tandem_agent_outbox_status_rows" in agent.metrics.render()
        assert wait_registered(env.hub.devices, "wired-b", 15) and agent.ota.wait_subscribed(10)
        rid = _rollout(env, "1.1.0", "lab-b")
        assert wait_for(lambda: agent.ota.updater.state == "watching", 60), agent.ota.updater.state
        env.broker.stop()
        assert wait_for(lambda: agent.ota.updater.state == "committed", 30), agent.ota.updater.state
        assert wait_for(lambda: agent.telemetry.outbox.depth(STATUS) >= 1, 5)  # on disk, not in paho's memory
        agent.stop()
        assert _rollout_body(env, rid)["status"] == "running"
        env.broker.start()
        # the hub's rollout subscriber first, so a catch-up command cannot answer in the outbox's place
        assert wait_for(lambda: env.hub.rollouts._client.is_connected(), 15)
        again = Agent(agent.config).start()
        assert again.model.version == "1.1.0"
        body = _completes(env, rid)
        assert body["counts"] == {"committed": 1}
        kinds = [(e["kind"], e["detail"].get("step"), e["detail"].get("reason", "")) for e in body["events"]]
        first = next(i for i, (kind, step, _) in enumerate(kinds) if step == "committed")
        assert kinds[first][2].startswith("healthy over"), kinds  # the watch's own verdict, from the outbox
        assert first < [k for k, _, _ in kinds].index("completed"), kinds
        assert wait_for(lambda: again.telemetry.outbox.depth(STATUS) == 0, 15)
    finally:
        if env.broker.proc is None:
            env.broker.start()
        agent.stop()
        if again is not None:
            again.stop()
