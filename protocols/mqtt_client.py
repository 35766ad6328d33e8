"""paho-mqtt quirks kept in one place, for every MQTT client of ours (agent, hub, simulator)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = ["IDLE_LOOP_STOP_S", "SESSION_CLOSE_S", "disconnect_and_stop", "set_reconnect_delay", "stop_loop"]

# paho naps up to 1 s at a time in its reconnect backoff; a client that is not connected has nothing to
# flush, so waiting for that nap to end is waiting for nothing (the hub stopped four of them, ~1 s each)
IDLE_LOOP_STOP_S = 0.1
# a connected client's thread writes DISCONNECT and ends in milliseconds when healthy
SESSION_CLOSE_S = 2.0


def set_reconnect_delay(client: "mqtt.Client", min_s: float, max_s: float) -> None:
    """Reconnect backoff from `min_s` doubling to `max_s`, sub-second allowed.

    paho annotates both as int, but its loop only compares and doubles them and sleeps that
    long: 0.2 s is what a broker restart on loopback wants (a whole second per try is not).
    """
    client.reconnect_delay_set(min_s, max_s)  # type: ignore[arg-type]  # floats work; paho's annotation says int


def stop_loop(client: "mqtt.Client", timeout_s: float) -> bool:
    """`loop_stop()` that gives up after `timeout_s`; False if paho's network thread was still running.

    paho's loop_stop() joins its thread without a timeout, and that thread finishes only when its
    connect attempt does (up to connect_timeout, TLS handshake included) and, if a connection came
    up after `disconnect()`, only once every QoS 1 message is acknowledged. Called after
    `disconnect()`; a thread left running is a daemon (it dies with the process), and what it still
    sends is already in an outbox that deletes rows on PUBACK only, so nothing is lost, at most resent.
    """
    done = threading.Thread(target=client.loop_stop, name="mqtt-loop-stop", daemon=True)
    done.start()
    done.join(max(0.0, timeout_s))
    return not done.is_alive()


def disconnect_and_stop(client: "mqtt.Client", timeout_s: float = SESSION_CLOSE_S) -> bool:
    """`disconnect()` then `stop_loop()`: up to `timeout_s` for a connected client to end its session cleanly,
    only IDLE_LOOP_STOP_S for one that is not connected; False if paho's thread was left to end by itself.

    A client that is not connected is asleep in its reconnect backoff or in a connect attempt: after
    `disconnect()` its thread ends when it wakes (within a second) or when that attempt is over, with no
    messages to deliver, so waiting for it buys nothing; it is a daemon, as in `stop_loop`.
    """
    connected = client.is_connected()
    client.disconnect()
    return stop_loop(client, timeout_s if connected else min(timeout_s, IDLE_LOOP_STOP_S))
