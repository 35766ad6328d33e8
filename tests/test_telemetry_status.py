"""A device's retained /status: online while it runs, offline after a graceful stop, and the
broker's last will says offline when the agent dies without a word (SIGKILL)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tandem.protocols.telemetry_codec import decode_status
from tandem.protocols.topics import parse_mqtt_url, status_topic
from telemetry_fixtures import needs_mosquitto, python_env

PROC = Path(__file__).with_name("telemetry_agent_proc.py")


def retained_status(url: str, device: str, timeout_s: float = 5.0) -> dict | None:
    """Subscribe fresh and return the retained status (None if there is none)."""
    host, port = parse_mqtt_url(url)
    got: list[bytes] = []
    event = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: (got.append(m.payload), event.set()) if m.retain else None
    client.connect(host, port)
    client.loop_start()
    try:
        client.subscribe(status_topic(device), qos=1)
        event.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return decode_status(got[0]) if got else None


def wait_state(url: str, device: str, state: str, timeout_s: float) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = retained_status(url, device, 1.0)
        if status and status["state"] == state:
            return status
        time.sleep(0.2)
    return None


def start(url: str, tmp_path: Path, device: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(PROC),
            "--mqtt-url",
            url,
            "--device",
            device,
            "--data-dir",
            str(tmp_path / device),
            "--keepalive",
            "1",
        ],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout.readline().strip() == b"ready"
    return proc


@needs_mosquitto
def test_status_is_retained_online_then_offline_by_stop_or_by_last_will(mosquitto, tmp_path):
    procs = [start(mosquitto.url, tmp_path, "dev-s1"), start(mosquitto.url, tmp_path, "dev-s2")]
    try:
        for device in ("dev-s1", "dev-s2"):
            online = wait_state(mosquitto.url, device, "online", 10)
            assert online and online["model"] == "toy" and online["device_id"] == device
        procs[0].terminate()
        assert procs[0].wait(20) == 0
        assert wait_state(mosquitto.url, "dev-s1", "offline", 5), "graceful stop did not say offline"
        procs[1].kill()  # no goodbye: the broker must send the will
        procs[1].wait(5)
        assert wait_state(mosquitto.url, "dev-s2", "offline", 8), "last will did not say offline"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
