"""Two real Mosquittos for the site-bridge tests: the centre (the hub's mutual-TLS broker, with the fleet
ACL and the identity plugin) and a site broker run from `tandem-hub site-broker conf`'s config, with a
loopback TCP proxy on the link between them so a test can take it down and bring it back.

The link goes down as a dead route does for a client: open connections are reset and new ones refused
(nothing listens). sim.netfault.FaultProxy's partition accepts a connection and then cuts it, which is
what a TCP-terminating load balancer without a backend does; Mosquitto 2.0.11's bridge backs off much
longer after such half-made TLS connections (seen here: no retry for over 50 s after the link returned),
see docs/scaling.md."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt

from tandem.cloud_hub.broker import MosquittoBroker, free_port
from tandem.cloud_hub.pki import Pki
from tandem.cloud_hub.site_bridge import SiteBridgeConfig, write_site_broker
from tandem.protocols.tls import TlsFiles, configure_mqtt_client
from telemetry_fixtures import MosquittoProcess


class LinkProxy:
    """Forwards 127.0.0.1:`port` to the target; `down()` resets open connections and stops listening,
    `up()` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def up(self) -> "LinkProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # on Linux close() alone leaves a blocked accept() listening
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the pump threads blocked in recv()
            except OSError:
                pass
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class SiteBroker(MosquittoProcess):
    """The site's Mosquitto, run from `tandem-hub site-broker conf`'s config; stoppable and restartable."""

    def __init__(self, config: SiteBridgeConfig) -> None:
        super().__init__(config.conf_path, config.listen_port, config.workdir / "mosquitto.log", "site mosquitto")
        self.config = config


@dataclass
class BridgedSite:
    pki: Pki
    centre: MosquittoBroker
    link: LinkProxy  # the site -> centre TCP link
    site: SiteBroker

    def centre_log(self) -> str:
        return (self.pki.root.parent / "centre" / "mosquitto.log").read_text(errors="replace")

    def stop(self) -> None:
        self.site.stop()
        self.link.down()
        self.centre.stop()


def start_bridged_site(root: Path, site: str = "lyon") -> BridgedSite:
    """A PKI, the centre broker (mutual TLS) behind a proxy, and a site broker bridged through it."""
    pki = Pki.init(root / "pki")
    centre_port = free_port()
    link = LinkProxy(centre_port).up()
    config = SiteBridgeConfig(site, f"mqtts://127.0.0.1:{link.port}", root / "site", listen_port=free_port())
    write_site_broker(pki, config)  # before the centre starts: its ACL lists the site's identity
    centre = MosquittoBroker.start(root / "centre", port=centre_port, tls_pki=pki)
    try:
        site_broker = SiteBroker(config).start()
    except Exception:
        centre.stop()
        link.down()
        raise
    return BridgedSite(pki, centre, link, site_broker)


def mqtt_client(
    url: str,
    client_id: str,
    on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
    tls: TlsFiles | None = None,
    persistent: bool = False,
) -> mqtt.Client:
    """A connected MQTT 5 client (loop started); `persistent`: a session the broker keeps for a day."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    host, port = configure_mqtt_client(client, url, tls, "site bridge test")
    if on_message is not None:
        client.on_message = lambda c, u, m: on_message(m)
    props = Properties(PacketTypes.CONNECT)
    if persistent:
        props.SessionExpiryInterval = 24 * 3600
    client.connect(host, port, keepalive=10, clean_start=not persistent, properties=props)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.is_connected(), f"{client_id} could not connect to {url}"
    return client
