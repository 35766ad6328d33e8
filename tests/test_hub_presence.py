"""Devices appear in the hub's registry from their MQTT status, and telemetry keeps them online."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import pytest


from tandem.cloud_hub.devices import DeviceRegistry
from tandem.cloud_hub.presence import DevicePresence, plan_status, wait_registered
from tandem.cloud_hub.storage import open_database
from tandem.protocols.telemetry_codec import STATUS_OFFLINE, STATUS_ONLINE, encode_status
from tandem.protocols.topics import status_topic


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(tmp_path):
    db = open_database(tmp_path / "hub.sqlite")
    clock = _FakeClock()
    yield DeviceRegistry(db, offline_after_s=90, known_profiles={"cpu-x86", "cpu-arm"}, clock=clock), clock
    db.close()


def test_plan_registers_unknown_online_device_with_profile():
    action = plan_status(
        "cam-1", {"state": STATUS_ONLINE, "profile": "cpu-arm", "model": "m", "version": "1.0.0"}, False
    )
    assert (action.kind, action.profile, action.model_version) == ("register", "cpu-arm", "1.0.0")
    assert action.agent_version == "unknown"


def test_plan_keeps_registered_devices_tags_and_only_heartbeats():
    action = plan_status("cam-1", {"state": STATUS_ONLINE, "profile": "cpu-arm", "version": "2.0.0"}, True)
    assert action.kind == "heartbeat" and action.model_version == "2.0.0" and action.tags is None


def test_plan_marks_offline_and_ignores_profileless_strangers():
    assert plan_status("cam-1", {"state": STATUS_OFFLINE}, True).kind == "offline"
    assert plan_status("cam-1", {"state": STATUS_OFFLINE}, False).kind == "ignore"
    assert "profile" in plan_status("cam-1", {"state": STATUS_ONLINE}, False).reason


def test_touch_marks_many_devices_seen_and_skips_unknown(registry):
    devices, clock = registry
    for i in range(3):
        devices.register(f"d{i}", "cpu-x86", "1")
    clock.now += 500
    assert devices.counts()["online"] == 0
    assert devices.touch(["d0", "d2", "stranger"]) == 2
    assert {d.device_id for d in devices.list()[0] if d.status == "online"} == {"d0", "d2"}


def test_presence_service_registers_device_from_retained_status(mosquitto, tmp_path):  # noqa: F811
    db = open_database(tmp_path / "hub.sqlite")
    devices = DeviceRegistry(db, offline_after_s=90, known_profiles={"cpu-x86"})

    class _Hub:
        mqtt_url = mosquitto.url

    hub = _Hub()
    hub.devices = devices
    # The device says online (retained) before the hub listens: the hub still learns of it.
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-a", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.publish(
        status_topic("dev-a"),
        encode_status(STATUS_ONLINE, "dev-a", profile="cpu-x86", model="digits", version="1.0.0"),
        qos=1,
        retain=True,
    ).wait_for_publish(5)
    pub.publish(status_topic("dev-bad"), b"not json", qos=1, retain=True).wait_for_publish(5)
    presence = DevicePresence(flush_s=0.1)
    presence.start(hub)
    try:
        assert wait_registered(devices, "dev-a", 10)
        record = devices.get("dev-a")
        assert (record.profile, record.model_name, record.model_version, record.status) == (
            "cpu-x86",
            "digits",
            "1.0.0",
            "online",
        )
        deadline = time.monotonic() + 5
        while presence.bad == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert presence.bad == 1 and not devices.exists("dev-bad")
        presence.note_seen(["dev-a"])
        assert presence.flush() == 1
    finally:
        presence.stop()
        pub.loop_stop()
        pub.disconnect()
        db.close()


def test_a_default_hub_lists_an_agent_that_only_speaks_mqtt_and_keeps_it_online_from_telemetry(tmp_path, digits_dir):
    """No REST registration: the agent's retained status registers it; its windows are heartbeats."""
    from hub_registry_fixtures import make_model_dir
    from telemetry_fixtures import MOSQUITTO

    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub
    from tandem.edge_agent.telemetry import TelemetryService
    from tandem.protocols.manifest import load_manifest

    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed")
    model_dir = make_model_dir(digits_dir, tmp_path / "model")
    with Hub(
        HubConfig.from_keys({"data_dir": tmp_path / "hub", "http.port": 0, "grpc.port": 0, "mqtt.broker": "mosquitto"})
    ).start() as hub:
        assert hub.presence is not None and hub.telemetry.on_seen == hub.presence.note_seen
        with TelemetryService(
            hub.mqtt_url, "cam-9", load_manifest(model_dir), tmp_path / "agent", window_s=60, profile="cpu-x86"
        ) as agent:
            assert wait_registered(hub.devices, "cam-9", 10)
            record = hub.devices.get("cam-9")
            assert (record.profile, record.model_name, record.model_version) == ("cpu-x86", "digits", "1.0.0")
            first_seen = record.last_seen
            time.sleep(0.05)
            agent.record("edge", 2.0, 0.9, 1)
            agent.flush()
            assert agent.publisher.wait_drained(10)
            deadline = time.monotonic() + 10
            while hub.devices.get("cam-9").last_seen <= first_seen and time.monotonic() < deadline:
                time.sleep(0.1)
            assert hub.devices.get("cam-9").last_seen > first_seen, "a stored window did not count as a heartbeat"
    assert hub.presence is None
