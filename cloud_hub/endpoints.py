"""The hub's MQTT port, chosen once and kept: agents configured against it keep telemetry and OTA
across hub restarts.

An explicit `mqtt_port` wins. Otherwise the port recorded in `<data_dir>/mqtt_port` is reused;
on first start it is 1883 (MQTT's own port) when free, else any free port, and recorded.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

log = logging.getLogger(__name__)

MQTT_DEFAULT_PORT = 1883
PORT_FILE = "mqtt_port"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def any_free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def recorded_port(data_dir: Path) -> int | None:
    """The port a previous start recorded, or None (absent or unreadable: chosen anew)."""
    try:
        port = int((data_dir / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def stable_mqtt_port(data_dir: Path, host: str, configured: int = 0) -> int:
    """`configured` when set; else the recorded port; else 1883 when free, else a free port (then recorded)."""
    if configured:
        return configured
    port = recorded_port(data_dir)
    if port is not None:
        return port
    port = MQTT_DEFAULT_PORT if port_is_free(host, MQTT_DEFAULT_PORT) else any_free_port(host)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / PORT_FILE).write_text(f"{port}\n")
    log.info("mqtt port chosen port=%d recorded=%s", port, data_dir / PORT_FILE)
    return port
