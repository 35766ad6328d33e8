"""A real `tandem-agent run` process inside a scenario, driven over its ZeroMQ API.

It runs the whole daemon (server, batcher, policy, fallback, TelemetryService with its
own MQTT session, OtaClient), so a scenario can check that what the virtual devices
show also holds for the shipped process. It runs at host speed (no emulation), talks
to the hub and broker through the same fault proxies, and stops with SIGTERM (the
agent closes its window and drains its outbox as on a real device).
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tandem.sim.device import DeviceSpec, Outcome
from tandem.sim.streams import DeviceStream

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
READY_MARK = "tandem-agent: serving"
TAIL_LINES = 20  # of an agent's output, in the error when it does not start
OUTBOX_FILENAME = "telemetry_outbox.sqlite"  # edge_agent.telemetry.service.OUTBOX_FILENAME


class AgentProcessError(RuntimeError):
    """The agent process did not start; the message carries the end of its log."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


class AgentProcess:
    """One device served by a real agent process; the fleet's workers call `serve(t)` like a virtual device's."""

    def __init__(
        self,
        spec: DeviceSpec,
        stream: DeviceStream,
        workdir: Path,
        model_dir: Path,
        *,
        hub_grpc: str,
        mqtt_url: str,
        hub_model: str,
        window_s: float,
        threshold: float,
        deadline_ms: float,
        ota: Any = None,
        trusted_pem: str | None = None,
    ) -> None:
        self.spec = spec
        self.device_id = spec.device_id
        self.profile = spec.profile
        self.stream = stream
        self.workdir = workdir
        self.rng = np.random.default_rng(spec.seed + 7919)
        self.next_at = float(self.rng.uniform(0, 1.0 / spec.rate_hz))
        self.telemetry = None  # the agent keeps its own; read back with sent()/pending() after stop()
        self.ota = None
        self.version: str | None = None
        self.answers = 0
        self.endpoint = f"tcp://127.0.0.1:{_free_port()}"
        self._proc: subprocess.Popen | None = None
        self._client: Any = None
        self.log_path = workdir / "agent.log"
        settings: dict[str, Any] = {  # dotted TOML keys: "model.dir = ..." is key dir of [model]
            "model.dir": str(model_dir),
            "model.profile": spec.profile.name,
            "server.endpoint": self.endpoint,
            "server.device_id": spec.device_id,
            "policy.threshold": threshold,
            "fallback.hub_url": hub_grpc,
            "fallback.hub_model": hub_model,
            "fallback.deadline_ms": deadline_ms,
            "hard_examples.data_dir": str(workdir / "data"),
            "telemetry.mqtt_url": mqtt_url,
            "telemetry.window_s": window_s,
            "model.threads": 1,
        }
        if spec.tags:
            settings["server.tags"] = dict(spec.tags)
        if trusted_pem is not None:  # the publisher that signed model_dir (OTA releases: ota.trusted_key)
            workdir.mkdir(parents=True, exist_ok=True)
            (workdir / "publisher.pem").write_text(trusted_pem)
            settings["trust.keys"] = [str(workdir / "publisher.pem")]
        if spec.ota and ota is not None:
            key = workdir / "hub-release.pem"
            workdir.mkdir(parents=True, exist_ok=True)
            key.write_text(ota.trusted_pem if isinstance(ota.trusted_pem, str) else ota.trusted_pem.decode())
            settings.update(
                {
                    "ota.enabled": True,
                    "ota.trusted_key": str(key),
                    "ota.hub_token": ota.token,
                    "ota.watch_s": ota.watch.watch_s,
                    "ota.min_requests": ota.watch.min_requests,
                    "ota.max_fallback_rise": ota.watch.max_fallback_rise,
                    "ota.max_latency_ratio": ota.watch.max_latency_ratio,
                }
            )
        self.config_path = workdir / "agent.toml"
        self._settings = settings

    def launch(self) -> "AgentProcess":
        """Start the process (returns at once; `wait_ready` waits for its ready line)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in self._settings.items()))
        log_file = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.edge_agent.cli", "run", "--config", str(self.config_path)],
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
        )
        log_file.close()
        return self

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        from tandem.edge_agent.client import AgentClient

        started = time.monotonic()
        deadline = started + timeout_s
        status = None
        while time.monotonic() < deadline:
            if self._proc is not None and (status := self._proc.poll()) is not None:
                break
            if READY_MARK in self.log_path.read_text(errors="replace"):
                self._client = AgentClient(self.endpoint, timeout_s=5.0)
                return
            time.sleep(0.1)
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:])
        self.stop()
        if status is not None:
            raise AgentProcessError(
                f"tandem-agent for {self.device_id} exited with status {status} after "
                f"{time.monotonic() - started:.1f}s; its last output:\n{tail}"
            )
        raise AgentProcessError(f"tandem-agent for {self.device_id} did not start within {timeout_s:g}s:\n{tail}")

    def online(self, t: float) -> bool:
        return True

    def serve(self, t: float) -> Outcome | None:
        from tandem.edge_agent.errors import AgentError

        if self._client is None:
            return None
        x, y = self.stream.next(t, self.spec.rows)
        try:
            answer = self._client.infer(x)
        except AgentError as exc:
            log.debug("agent process answered an error device=%s error=%s", self.device_id, exc)
            return Outcome(self.device_id, self.profile.name, "error", 0.0, len(x), 0, self.version or "")
        self.version = answer.model_version
        self.answers += 1
        return Outcome(
            self.device_id,
            self.profile.name,
            answer.source,
            answer.latency_ms,
            len(x),
            int((np.asarray(answer.labels) == y).sum()),
            answer.model_version,
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM and wait: the agent flushes its open window and drains its outbox to the broker."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("agent process did not stop; killing device=%s", self.device_id)
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def close(self) -> None:
        self.stop()

    def _outbox(self, query: str) -> int:
        path = self.workdir / "data" / OUTBOX_FILENAME
        if not path.exists():
            return 0
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute(query).fetchone()[0])
        finally:
            conn.close()

    def sent(self) -> int:
        """Windows the agent numbered (its outbox's last sequence)."""
        return self._outbox("SELECT value FROM meta WHERE key='last_sequence'")

    def pending(self) -> int:
        """Windows still waiting in its outbox."""
        return self._outbox("SELECT COUNT(*) FROM outbox")
