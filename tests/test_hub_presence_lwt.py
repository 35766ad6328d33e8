"""Presence from retained status + last will + keepalive: a SIGKILLed agent is offline within 1.5x its
keepalive, an idle connected one stays online, and statuses are ordered by (boot, connection), not clocks."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tandem.cloud_hub.devices import DeviceFilter, DeviceRegistry, newer_presence
from tandem.cloud_hub.presence import DevicePresence, apply_status, plan_status, wait_registered
from tandem.cloud_hub.storage import open_database
from tandem.protocols.telemetry_codec import STATUS_OFFLINE, STATUS_ONLINE
from telemetry_fixtures import python_env

KEEPALIVE_S = 2
SLACK_S = 1.5  # message delivery and the hub's MQTT thread on a loaded 2-core CI machine


@pytest.fixture
def registry(tmp_path):
    db = open_database(tmp_path / "hub.sqlite")
    yield DeviceRegistry(db, offline_after_s=1.0, known_profiles={"cpu-x86"})
    db.close()


def _status(state: str, boot: int, conn: int) -> dict:
    return {"state": state, "profile": "cpu-x86", "boot": boot, "conn": conn, "at": 0.0}


def test_statuses_are_ordered_by_boot_and_connection_not_wall_time(registry):
    def say(state: str, boot: int, conn: int, at: float) -> str:
        status = {**_status(state, boot, conn), "at": at}
        apply_status(registry, plan_status("cam", status, registry.exists("cam")))
        return registry.get("cam").status

    assert say(STATUS_ONLINE, 100, 1, at=50.0) == "online"
    # the will of connection 1 was built before the online message (older `at`) and still wins
    assert say(STATUS_OFFLINE, 100, 1, at=10.0) == "offline"
    assert say(STATUS_ONLINE, 100, 1, at=60.0) == "offline"  # a replayed online of the same connection
    assert say(STATUS_ONLINE, 100, 2, at=5.0) == "online"  # reconnected: newer, whatever its clock says
    assert say(STATUS_OFFLINE, 100, 1, at=99.0) == "online"  # a stale will of the earlier connection
    assert say(STATUS_OFFLINE, 99, 7, at=99.0) == "online"  # ... or of an earlier boot
    assert say(STATUS_OFFLINE, 101, 1, at=1.0) == "offline"  # a later boot
    assert newer_presence(None, (1, 1, 0)) and newer_presence((1, 1, 0), None)


AGENT = textwrap.dedent("""
    import sys, time
    from tandem.edge_agent.telemetry.outbox import Outbox
    from tandem.edge_agent.telemetry.publisher import PublisherConfig, TelemetryPublisher
    url, device, keepalive, outbox = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    pub = TelemetryPublisher(PublisherConfig(url, keepalive_s=keepalive), Outbox(outbox), device,
                             status_info={"profile": "cpu-x86", "model": "m", "version": "1.0.0"})
    pub.start()
    while not pub.connected:
        time.sleep(0.02)
    print("connected", flush=True)
    time.sleep(3600)
""")


def _start_agent(url: str, device: str, tmp_path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT, url, device, str(KEEPALIVE_S), str(tmp_path / f"{device}.db")],
        stdout=subprocess.PIPE,
        env=python_env(),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"connected"
    return proc


class _Hub:
    def __init__(self, url: str, devices: DeviceRegistry) -> None:
        self.mqtt_url = url
        self.devices = devices


def test_a_killed_agent_is_offline_within_one_and_a_half_keepalives_and_an_idle_one_stays_online(
    mosquitto, registry, tmp_path
):  # noqa: F811
    presence = DevicePresence(flush_s=0.1)
    presence.start(_Hub(mosquitto.url, registry))
    killed = _start_agent(mosquitto.url, "cam-killed", tmp_path)
    idle = _start_agent(mosquitto.url, "cam-idle", tmp_path)
    try:
        assert wait_registered(registry, "cam-killed", 10) and wait_registered(registry, "cam-idle", 10)
        killed.send_signal(signal.SIGKILL)
        killed.wait(5)
        t0 = time.monotonic()
        while registry.get("cam-killed").status != "offline" and time.monotonic() - t0 < 4 * KEEPALIVE_S:
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert registry.get("cam-killed").status == "offline"
        assert took <= 1.5 * KEEPALIVE_S + SLACK_S, f"offline after {took:.2f} s"
        # idle: no telemetry for several times offline_after_s (1 s), but connected: still online
        time.sleep(3.0)
        assert registry.get("cam-idle").status == "online"
        assert registry.counts()["online"] == 1
        assert [d.device_id for d in registry.list(DeviceFilter(status="online"))[0]] == ["cam-idle"]
    finally:
        for proc in (killed, idle):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        presence.stop()
