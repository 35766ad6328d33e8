"""A real `tandem-hub serve` in a subprocess, driven by its flags, for tests of the command line itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

URL_NAMES = ("http", "docs", "telemetry", "drift", "rollouts", "hard_examples", "public", "mqtt", "grpc")
QUIET_FLAGS = ("--mqtt-url", "mqtt://127.0.0.1:1", "--no-telemetry", "--no-rollouts")  # no broker needed


@contextmanager
def serve_hub(data_dir: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Start `tandem-hub serve --data-dir DATA_DIR FLAGS...`, yield the URLs it printed ({"http": ...}),
    stop it with SIGTERM."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    err = open(data_dir.parent / f"{data_dir.name}-stderr.log", "w+")  # a file: a chatty hub never blocks on a pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.cloud_hub.cli", "serve", "--data-dir", str(data_dir), *flags],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
    )
    try:
        urls: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                break
            parts = line.split()
            if len(parts) == 2 and parts[0] in URL_NAMES:
                urls[parts[0]] = parts[1]
            elif urls:  # the line after the URL block
                break
        if "http" not in urls:
            proc.kill()
            proc.wait(10)
            err.seek(0)
            raise AssertionError(f"tandem-hub serve did not start: {err.read()[-2000:]}")
        yield urls
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        err.close()
