"""Stopping an MQTT client does not wait on paho's reconnect nap (up to 1 s) when there is no session to
close, so a hub whose broker is unreachable stops in about one short bound, not four naps of its clients
(presence, telemetry ingest, hard examples, rollouts: ~3.3 s at load 5 before)."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.protocols.mqtt_client import IDLE_LOOP_STOP_S, disconnect_and_stop, set_reconnect_delay
from telemetry_fixtures import free_port, needs_mosquitto
from waiting import wait_for

SLACK_S = 0.4  # scheduling on a loaded 2-core CI machine; a nap paho began is ~1 s


def _paho_thread_alive(client_id: str) -> bool:
    return any(t.name == f"paho-mqtt-client-{client_id}" and t.is_alive() for t in threading.enumerate())


def _client(client_id: str, port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect_async("127.0.0.1", port)
    return client


def test_a_client_backing_off_from_a_dead_broker_stops_without_waiting_for_its_nap_and_its_thread_ends():
    client = _client("backing-off", free_port())  # nothing listens: every connect is refused at once
    set_reconnect_delay(client, 5.0, 5.0)  # paho then sleeps in 1 s naps
    refused = threading.Event()
    client.on_connect_fail = lambda *a: refused.set()
    client.loop_start()
    assert refused.wait(10), "the connect to a closed port was never refused"
    t0 = time.monotonic()  # paho's thread has just begun a 1 s nap
    stopped = disconnect_and_stop(client)
    took = time.monotonic() - t0
    assert took < IDLE_LOOP_STOP_S + SLACK_S, f"stop waited {took:.2f} s for paho's reconnect nap"
    assert not stopped  # still asleep: left to end by itself
    assert wait_for(lambda: not _paho_thread_alive("backing-off"), 5), "paho's thread did not end after its nap"


@needs_mosquitto
def test_a_connected_client_is_stopped_cleanly_and_waited_for(mosquitto):
    client = _client("connected", mosquitto.port)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.loop_start()
    assert connected.wait(10)
    assert disconnect_and_stop(client) is True
    assert not _paho_thread_alive("connected")


def test_a_hub_with_an_unreachable_broker_stops_in_well_under_its_four_clients_naps(tmp_path):
    hub = Hub(
        HubConfig.from_keys(
            {"data_dir": tmp_path / "hub", "http.port": 0, "mqtt.url": f"mqtt://127.0.0.1:{free_port()}"}
        )
    )
    hub.start()
    try:
        assert hub.telemetry is not None and hub.presence is not None
        assert hub.hard_examples is not None and hub.rollouts is not None
        time.sleep(1.0)  # every client has been refused and is in its backoff
    finally:
        t0 = time.monotonic()
        hub.stop()
        took = time.monotonic() - t0
    # before: up to a ~1 s nap per client, 1.75-3.6 s here (load 4-5); now 4 x IDLE_LOOP_STOP_S, the HTTP
    # server and the stores: 0.62-0.83 s at the same load
    assert took < 1.5, f"Hub.stop took {took:.2f} s with an unreachable broker"
