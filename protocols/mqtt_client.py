"""paho-mqtt quirks kept in one place, for every MQTT client of ours (agent, hub, simulator)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

__all__ = ["set_reconnect_delay"]


def set_reconnect_delay(client: "mqtt.Client", min_s: float, max_s: float) -> None:
    """Reconnect backoff from `min_s` doubling to `max_s`, sub-second allowed.

    paho annotates both as int, but its loop only compares and doubles them and sleeps that
    long: 0.2 s is what a broker restart on loopback wants (a whole second per try is not).
    """
    client.reconnect_delay_set(min_s, max_s)  # type: ignore[arg-type]  # floats work; paho's annotation says int
