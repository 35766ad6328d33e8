"""Site brokers bridged to the centre: `tandem-hub site-broker conf` writes the config, real Mosquittos run it.

The slow test is issue 19's story: devices (the agent's real telemetry service, one process each) on a
site broker, the site-to-centre link cut for 60 s by a TCP proxy the test controls; afterwards every
window is stored exactly once at the hub, and an OTA command sent during the outage reaches its device.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from site_bridge_fixtures import mqtt_client, start_bridged_site
from tandem.cloud_hub import cli
from tandem.cloud_hub.errors import ConflictError, InvalidInputError
from tandem.cloud_hub.mqtt_security import acl_text
from tandem.cloud_hub.pki import Pki
from tandem.cloud_hub.site_bridge import SiteBridgeConfig, write_site_broker
from tandem.cloud_hub.telemetry import TelemetryIngestService, TelemetryServiceConfig
from tandem.protocols import topics
from tandem.protocols.mqtt_props import publish_properties
from tandem.protocols.ota import OtaCommand, decode_command, encode_command
from telemetry_fixtures import needs_mosquitto, python_env
from waiting import wait_for

OUTAGE_S = 60.0  # issue 19: the link down 60 s
AGENT_PROC = Path(__file__).with_name("telemetry_agent_proc.py")


def conf_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_conf_bridges_device_topics_up_and_commands_down_persistently_over_mutual_tls(tmp_path):
    pki = Pki.init(tmp_path / "pki")
    config = SiteBridgeConfig("lyon", "mqtts://hub.example.org:8883", tmp_path / "site", listen_port=11883)
    lines = conf_lines(write_site_broker(pki, config))
    up, down = topics.site_bridge_topics()
    assert [line for line in lines if line.startswith("topic ")] == [
        *(f"topic {t} out 1" for t in up),
        *(f"topic {t} in 1" for t in down),
    ]
    assert "topic tandem/v1/+/telemetry out 1" in lines and "topic tandem/v1/+/ota/cmd in 1" in lines
    assert not set(up) & set(down)  # nothing can loop between the brokers
    for setting in (
        "address hub.example.org:8883",
        "cleansession false",
        "local_cleansession false",
        "bridge_protocol_version mqttv311",  # MQTT 5 bridges lose their centre session (cloud_hub.site_bridge)
        "restart_timeout 5 5",  # a constant 5 s (a lone value still backs off to 30 s on Mosquitto 2.0.11)
        "bridge_insecure false",
        "remote_clientid tandem-bridge-_site-lyon",
        "listener 11883 127.0.0.1",
        "persistence true",
        "max_queued_messages 1000000",  # Mosquitto's default of 1,000 would drop an outage's windows
    ):
        assert setting in lines, setting
    certfile = Path(next(line.split(" ", 1)[1] for line in lines if line.startswith("bridge_certfile ")))
    keyfile = Path(next(line.split(" ", 1)[1] for line in lines if line.startswith("bridge_keyfile ")))
    assert certfile.read_bytes() == pki.site_files("lyon").cert.read_bytes()
    assert keyfile.stat().st_mode & 0o077 == 0
    # the centre's ACL names the site's identity with exactly the bridged filters
    assert pki.site_identities() == ["_site-lyon"]
    acl = acl_text(pki.site_identities()).splitlines()
    block = acl[acl.index("user _site-lyon") + 1 :][: len(up) + len(down)]
    assert block == [*(f"topic write {t}" for t in up), *(f"topic read {t}" for t in down)]
    # a second run reuses the live certificate; a revoked one leaves the ACL
    write_site_broker(pki, config)
    assert [r.kind for r in pki.issued()].count("site") == 1
    with pytest.raises(ConflictError, match="revoke it first"):
        pki.issue_site("lyon")
    pki.revoke("_site-lyon")
    assert "user _site-lyon" not in acl_text(pki.site_identities())


@pytest.mark.parametrize(
    "site,centre,match",
    [
        ("lyon", "mqtt://hub:1883", "needs mutual TLS.*mqtts://"),
        ("lyon", "mqtts://", "expected mqtt://host"),
        ("ly/on", "mqtts://hub:8883", "may not contain '/'"),
        ("hub", "mqtts://hub:8883", "reserved"),
    ],
)
def test_bad_site_or_centre_is_refused_by_name(tmp_path, site, centre, match):
    with pytest.raises(InvalidInputError, match=match):
        SiteBridgeConfig(site, centre, tmp_path / "site")


def test_cli_writes_the_config_and_says_what_to_run(tmp_path, capsys):
    Pki.init(tmp_path / "pki")
    argv = ["site-broker", "conf", "lyon", "--centre", "mqtts://127.0.0.1:8883", "--out", str(tmp_path / "s")]
    assert cli.main([*argv, "--dir", str(tmp_path / "pki")]) == 0
    out = capsys.readouterr().out
    assert f"mosquitto -c {tmp_path / 's' / 'mosquitto.conf'}" in out and "_site-lyon" in out
    assert cli.main([*argv, "--dir", str(tmp_path / "pki")]) == 0  # again: same certificate, no error
    assert cli.main([*argv[:3], "--centre", "mqtt://x:1", "--out", "o", "--dir", str(tmp_path / "pki")]) == 1
    assert "needs mutual TLS" in capsys.readouterr().err


@needs_mosquitto
def test_bridge_carries_a_window_up_with_its_properties_and_a_command_down(tmp_path):
    """Real Mosquitto x2 on mutual TLS: a window goes up whole, a command comes down, nothing else goes up."""
    bridged = start_bridged_site(tmp_path)
    at_hub: list = []
    at_device: list = []
    hub = device = None
    try:
        hub = mqtt_client(bridged.centre.url, "tandem-hub-test", at_hub.append, bridged.pki.hub_client_files())
        hub.subscribe(f"{topics.PREFIX}/#", qos=1)
        device = mqtt_client(bridged.site.url, "tandem-ota-cam-1", at_device.append, persistent=True)
        device.subscribe(topics.ota_cmd_topic("cam-1"), qos=1)
        props = publish_properties(topics.TELEMETRY)

        def window_arrived() -> bool:
            device.publish(topics.telemetry_topic("cam-1"), b"w", qos=1, properties=props)
            time.sleep(0.3)
            return any(m.topic == topics.telemetry_topic("cam-1") for m in at_hub)

        assert wait_for(window_arrived, 30), f"no window crossed the bridge: {bridged.site.log_text[-600:]}"
        assert next(m for m in at_hub if m.topic == topics.telemetry_topic("cam-1")).payload == b"w"
        hub.publish(topics.ota_cmd_topic("cam-1"), b"cmd", qos=1)
        assert wait_for(lambda: [m.payload for m in at_device] == [b"cmd"], 15)
        # a command published on the site side is not carried up (the mapping sends commands down only)
        device.publish(topics.ota_cmd_topic("cam-2"), b"forged", qos=1)
        time.sleep(1.0)
        assert not any(m.payload == b"forged" for m in at_hub)
    finally:
        for c in (hub, device):
            if c is not None:
                c.loop_stop()
                c.disconnect()
        bridged.stop()


def _stored_sequences(hub_dir: Path, device: str) -> list[int]:
    conn = sqlite3.connect(f"file:{hub_dir / 'telemetry.sqlite'}?mode=ro", uri=True)
    try:
        return [
            r[0]
            for r in conn.execute(
                "SELECT sequence FROM telemetry_windows WHERE device_id=? ORDER BY sequence", [device]
            )
        ]
    finally:
        conn.close()


def _outbox(data_dir: Path) -> tuple[int, int]:
    """(last sequence, windows not yet acknowledged) from the agent's outbox file."""
    conn = sqlite3.connect(str(data_dir / "telemetry_outbox.sqlite"))
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        (pending,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
    finally:
        conn.close()
    return int(meta["last_sequence"]), pending


def _start_agent(url: str, data_dir: Path, device: str) -> subprocess.Popen:
    data_dir.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, str(AGENT_PROC), "--mqtt-url", url, "--device", device, "--data-dir", str(data_dir)]
        + ["--window-s", "0.5", "--rate", "20"],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=open(data_dir / "agent.log", "ab"),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


@needs_mosquitto
@pytest.mark.slow
def test_site_link_down_60s_every_window_arrives_once_and_a_command_sent_meanwhile_is_delivered(tmp_path):
    bridged = start_bridged_site(tmp_path)
    devices = ["cam-1", "cam-2", "cam-3"]
    hub_dir = tmp_path / "hub"
    ingest = TelemetryIngestService(
        hub_dir,
        bridged.centre.url,
        lambda name, version: None,
        TelemetryServiceConfig(eval_interval_s=3600, ingest={"tls": bridged.pki.hub_client_files()}),
    )
    release = Ed25519PrivateKey.generate()
    commands: list = []
    agents: list[subprocess.Popen] = []
    hub = ota = None
    try:
        ingest.start()
        assert ingest.ingest.wait_subscribed(10), "hub did not subscribe"
        hub = mqtt_client(bridged.centre.url, "tandem-hub-rollouts-test", tls=bridged.pki.hub_client_files())
        # the device's OTA session on its site broker (QoS 1, kept while it is away: as the agent's OTA client)
        ota = mqtt_client(bridged.site.url, "tandem-ota-cam-1", commands.append, persistent=True)
        ota.subscribe(topics.ota_cmd_topic("cam-1"), qos=1)
        for d in devices:
            agents.append(_start_agent(bridged.site.url, tmp_path / d, d))
        assert wait_for(lambda: all(ingest.store.count_windows(d) >= 3 for d in devices), 60), (
            f"windows did not reach the hub through the bridge: {bridged.site.log_text[-600:]}"
        )

        bridged.link.down()  # the site-to-centre link goes down
        down_at = time.monotonic()
        time.sleep(2.0)
        stored_at_cut = sum(ingest.store.count_windows(d) for d in devices)
        now = time.time()
        cmd = OtaCommand("r-1", "install", "digits", "2.0.0", "http://hub/m", "0" * 64, "http://hub/a", now, now + 3600)
        hub.publish(topics.ota_cmd_topic("cam-1"), encode_command(cmd, release), qos=1).wait_for_publish(10)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        assert commands == [], "the command crossed a cut link"
        assert sum(ingest.store.count_windows(d) for d in devices) == stored_at_cut, "windows crossed a cut link"
        queued = {d: _outbox(tmp_path / d)[0] for d in devices}  # acknowledged by the site broker meanwhile

        bridged.link.up()  # the link returns
        back_at = time.monotonic()
        assert wait_for(lambda: len(commands) == 1, 60), (
            f"the command sent during the outage never arrived: site log {bridged.site.log_text[-800:]}"
        )
        delivered_s = time.monotonic() - back_at
        got = decode_command(commands[0].payload, release.public_key())
        assert (got.rollout_id, got.version, got.nonce) == ("r-1", "2.0.0", cmd.nonce)
        assert wait_for(lambda: all(ingest.store.count_windows(d) >= queued[d] for d in devices), 60), (
            f"the windows queued on the site broker did not all arrive: site log {bridged.site.log_text[-800:]}"
        )
        caught_up_s = time.monotonic() - back_at

        for proc in agents:
            proc.terminate()  # graceful: the open window is flushed, the outbox drained
        for proc, d in zip(agents, devices):
            assert proc.wait(30) == 0
            assert _outbox(tmp_path / d)[1] == 0, f"{d}: windows never acknowledged by the site broker"
        last = {d: _outbox(tmp_path / d)[0] for d in devices}
        assert wait_for(lambda: all(ingest.store.count_windows(d) >= last[d] for d in devices), 60)
        time.sleep(1.0)  # a late redelivery would land now
        for d in devices:
            stored = _stored_sequences(hub_dir, d)
            assert stored == list(range(1, last[d] + 1)), f"{d}: stored {len(stored)} of {last[d]}"
        total = sum(last.values())
        print(
            f"site link down {OUTAGE_S:.0f} s: {total} windows from {len(devices)} devices stored once each "
            f"({sum(queued.values()) - stored_at_cut} waited on the site broker); command delivered "
            f"{delivered_s:.1f} s and backlog caught up {caught_up_s:.1f} s after the link returned; "
            f"duplicates the hub received and dropped: {ingest.ingest.stats.duplicates}"
        )
        assert ingest.ingest.stats.stored == total and ingest.ingest.stats.bad == 0
    finally:
        for proc in agents:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for c in (hub, ota):
            if c is not None:
                c.loop_stop()
                c.disconnect()
        ingest.stop()
        bridged.stop()
