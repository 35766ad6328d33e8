"""The fleet's MQTT broker when none is configured: Mosquitto on loopback when it is
installed, otherwise amqtt (a Python broker) in a thread of the hub process.

Both listen on a free port unless one is given; `BrokerHandle.url` is what agents
and the hub's own MQTT clients connect to.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from tandem.cloud_hub.errors import BrokerError
from tandem.protocols import limits

if TYPE_CHECKING:
    from amqtt.broker import Broker

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0

# Sized for the fleet, not Mosquitto's default of 1,000 per client (about 10 s of hub downtime at
# 1,000 devices with 10 s windows): the hub's persistent session may queue 1,000,000 windows
# (about 2.8 h of downtime at 1,000 devices, 10 s windows) within 2 GiB; past either bound the
# broker drops the newest for that client and the hub counts the gap in sequence numbers.
MAX_QUEUED_MESSAGES = 1_000_000
MAX_QUEUED_BYTES = 2 * 1024**3
# Mosquitto writes its persistence file on this period and on a clean stop; a SIGKILL loses what it
# accepted since the last save (the agents' replay answers that, see docs/architecture.md).
AUTOSAVE_INTERVAL_S = 5


class BrokerHandle(Protocol):
    """A started broker (Mosquitto or the embedded one); read-only, so either may compute a member."""

    @property
    def kind(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    def stop(self) -> None: ...


PICK_PORT_ATTEMPTS = 3  # mosquitto started on a port picked for it: tries before giving up


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class MosquittoBroker:
    """A `mosquitto` child process with a config generated under data_dir/mosquitto/."""

    process: subprocess.Popen
    host: str
    port: int
    kind: str = "mosquitto"
    tls: bool = False

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def start(cls, workdir: Path, host: str = "127.0.0.1", port: int = 0, tls_pki: Any = None) -> "MosquittoBroker":
        """`tls_pki` (a cloud_hub.pki.Pki): a mutual-TLS listener with the fleet ACL (cloud_hub.mqtt_security)
        instead of the plain anonymous one."""
        exe = shutil.which("mosquitto")
        if exe is None:
            raise BrokerError(
                "mosquitto is not on PATH (install it, e.g. `apt-get install mosquitto`, or use broker=embedded)"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)  # a root Mosquitto reads its config from here: nobody else may write it
        (workdir / "data").mkdir(exist_ok=True)
        os.chmod(workdir / "data", 0o700)
        check_persistence_dir(workdir / "data")
        if port:
            check_port_free(host, port)
        chosen = port
        for attempt in range(1, PICK_PORT_ATTEMPTS + 1):
            # a port picked here is free now, not when mosquitto binds it: another process can take it in
            # between (seen with parallel test runs); then mosquitto exits with "Address already in use"
            port = chosen or free_port(host)
            try:
                process = cls._launch(exe, workdir, host, port, tls_pki)
                break
            except BrokerError as exc:
                if chosen or attempt == PICK_PORT_ATTEMPTS or "in use" not in str(exc):
                    raise
                log.warning("mosquitto could not bind the port it was given (%s); picking another", port)
        broker = cls(process=process, host=host, port=port, tls=tls_pki is not None)
        log.info("mosquitto started pid=%d url=%s", process.pid, broker.url)
        return broker

    @staticmethod
    def _launch(exe: str, workdir: Path, host: str, port: int, tls_pki: Any) -> subprocess.Popen:
        """Write the config for `port` and start mosquitto on it; BrokerError with its log's tail if it does not come up."""
        conf = workdir / "mosquitto.conf"
        if tls_pki is not None:
            from tandem.cloud_hub.mqtt_security import MosquittoTlsConfig, write_mosquitto_config

            conf = write_mosquitto_config(tls_pki, MosquittoTlsConfig(workdir, port=port, host=host))
        else:
            conf.write_text(
                "# generated by tandem-hub; edited copies are overwritten on start\n"
                f"listener {port} {host}\n"
                "allow_anonymous true\n"
                # the user the hub runs as: started as root, mosquitto would drop to user `mosquitto`,
                # which cannot write a root-owned data dir, and silently lose its sessions on restart
                f"user {getpass.getuser()}\n"
                "persistence true\n"
                f"persistence_location {workdir / 'data'}/\n"
                "log_dest stderr\n"
                "log_type error\nlog_type warning\n"
                f"max_packet_size {limits.MAX_MQTT_PAYLOAD_BYTES + limits.MQTT_PACKET_OVERHEAD_BYTES}\n"
            )
        os.chmod(conf, 0o600)
        with open(conf, "a") as fh:  # both the plain and the TLS config: queue limits and saves, stated
            fh.write(queue_config())
        from tandem.cloud_hub.mqtt_security import check_broker_files

        check_broker_files([conf, workdir / "data"])  # nobody else may change what a (root) Mosquitto reads
        log_file = open(workdir / "mosquitto.log", "ab")
        log_start = (workdir / "mosquitto.log").stat().st_size
        process = subprocess.Popen([exe, "-c", str(conf)], stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL)
        log_file.close()
        up = wait_for_port(host, port, START_TIMEOUT_S, alive=lambda: process.poll() is None)
        if up:  # the port answering is not enough: a leftover broker may hold it while ours fails to bind
            time.sleep(0.2)
        if not up or process.poll() is not None:
            if process.poll() is None:
                process.kill()
            process.wait(5)
            tail = (workdir / "mosquitto.log").read_bytes()[log_start:].decode(errors="replace")[-500:]
            raise BrokerError(f"mosquitto did not start on {host}:{port}: {tail.strip() or 'no output'}")
        return process

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        log.info("mosquitto stopped")


def queue_config() -> str:
    return (
        "# queue limits sized for the fleet (cloud_hub.broker.MAX_QUEUED_*), saves every few seconds\n"
        f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
        f"max_queued_bytes {MAX_QUEUED_BYTES}\n"
        f"autosave_interval {AUTOSAVE_INTERVAL_S}\n"
    )


def check_persistence_dir(path: Path) -> None:
    """Mosquitto runs as this process's user (the config says so); it must be able to write `path`."""
    if not os.access(path, os.W_OK | os.X_OK):
        raise BrokerError(
            f"{path}: the broker cannot write its persistence here (owner uid {path.stat().st_uid}, "
            f"this process runs as uid {os.getuid()}); without it a broker restart loses the hub's "
            "session and every window queued for it. Fix the owner or choose another data dir"
        )


def check_port_free(host: str, port: int) -> None:
    """Refuse to start on a port something already listens on (e.g. the broker of a killed hub):
    otherwise its answer would pass for ours and the hub would use a broker it does not own."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BrokerError(
                f"cannot start mosquitto on {host}:{port}: {exc.strerror or exc} (another broker, "
                "perhaps one a killed hub left running, holds it: stop it, or choose another "
                "mqtt.port)"
            ) from None


class EmbeddedBroker:
    """amqtt's broker on its own asyncio loop in a daemon thread."""

    kind = "embedded"

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0) -> "EmbeddedBroker":
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise BrokerError(
                "no MQTT broker available: install mosquitto, or `pip install amqtt`, or pass --mqtt-url"
            ) from exc
        for noisy in ("amqtt", "transitions"):
            # Their INFO logs narrate every state change; the hub's own lines say what matters.
            if logging.getLogger(noisy).level == logging.NOTSET:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        self = cls(host, port or free_port(host))
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                broker = self._broker = Broker(config, loop=self._loop)
                self._loop.run_until_complete(broker.start())
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="tandem-mqtt-broker", daemon=True)
        self._thread.start()
        if not started.wait(START_TIMEOUT_S) or errors:
            raise BrokerError(
                f"embedded MQTT broker did not start on {self.host}:{self.port}: {errors[0] if errors else 'timeout'}"
            )
        log.info("embedded MQTT broker started url=%s", self.url)
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(START_TIMEOUT_S)
            except Exception as exc:  # a broker that will not shut down cleanly still must stop
                log.warning("embedded broker shutdown error=%r", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._thread = None
        log.info("embedded MQTT broker stopped")


def start_broker(kind: str, workdir: Path, host: str = "127.0.0.1", port: int = 0, tls_pki: Any = None) -> BrokerHandle:
    """Start the broker `kind` asks for: auto = Mosquitto if installed, else embedded.

    With `tls_pki` only Mosquitto will do: the embedded broker has no client-certificate ACL.
    """
    if tls_pki is not None and (kind == "embedded" or not shutil.which("mosquitto")):
        raise BrokerError(
            "tls_dir needs Mosquitto (the embedded broker cannot check client certificates): "
            "install mosquitto, or point mqtt.url at an mqtts:// broker"
        )
    if kind == "mosquitto" or (kind == "auto" and shutil.which("mosquitto")):
        return MosquittoBroker.start(workdir, host, port, tls_pki=tls_pki)
    return EmbeddedBroker.start(host, port)
