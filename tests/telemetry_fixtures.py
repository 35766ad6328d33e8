"""Real Mosquitto for the telemetry tests: a generated config in a tmp dir, restartable on
the same port with its persistence (so QoS 1 sessions survive a broker restart)."""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Self

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float, up: bool = True) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return True
        except OSError:
            if not up:
                return True
        time.sleep(0.05)
    return False


class MosquittoProcess:
    """`mosquitto -c <conf>` as a child process listening on one loopback port; start() / stop() may be
    called repeatedly. The telemetry, OTA and site-bridge brokers differ only in the config they write."""

    def __init__(self, conf: Path, port: int, log: Path, what: str = "mosquitto") -> None:
        self.conf = conf
        self.port = port
        self.log = log
        self.what = what
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> Self:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto not installed (apt-get install mosquitto)")
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        if not wait_port(self.port, 10):
            self.stop()
            raise RuntimeError(f"{self.what} did not start: {self.log_text[-400:]}")
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto writes its persistence file (sessions, queued messages) and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        wait_port(self.port, 5, up=False)


class Mosquitto(MosquittoProcess):
    """One anonymous broker, config and log in `workdir`; restarts keep the port and (`persistence`) the
    sessions and queued messages."""

    def __init__(self, workdir: Path, port: int | None = None, persistence: bool = True) -> None:
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        super().__init__(workdir / "mosquitto.conf", port or free_port(), workdir / "mosquitto.log")
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # started as root, mosquitto drops to user `mosquitto`, which cannot write a private tmp dir
            f"user {getpass.getuser()}\n"
            "allow_anonymous true\n"
            + (f"persistence true\npersistence_location {workdir / 'data'}/\n" if persistence else "")
            + "max_queued_messages 100000\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )


@pytest.fixture
def mosquitto(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


def python_env() -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def tiny_disk(path: Path, size_kb: int = 8192) -> Iterator[Path]:
    """A tmpfs of `size_kb` mounted at `path` (skips the test where mount is not allowed: it needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): the disk-full test needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk says ENOSPC; the file is the space to give back."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler
