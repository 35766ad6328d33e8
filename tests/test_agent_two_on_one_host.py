"""Two agents on one host with the same endpoint or health port: the second fails at once with a message
naming the taken address and the flag to set, and the first keeps its clients (ZeroMQ would otherwise take
a live ipc:// socket over silently)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from agent_fixtures import free_port, make_linear_softmax, make_model_dir

ENV = {**os.environ, "TANDEM_AGENT_TRUST_ALLOW_UNSIGNED": "true"}
# Bounds on a hang only: an agent process starting up (imports, model load) costs about 1 s of CPU, and
# at load 26-34 on 2 cores (the suite beside other work) the 30 s bound on one was seen running out.
PROCESS_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("m")
    return make_model_dir(make_linear_softmax(root / "m.onnx", 4, 3), root / "model", name="tiny")


def agent_cmd(model_dir: Path, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "tandem.edge_agent.cli", "run", "--model-dir", str(model_dir), *flags,
    ]  # fmt: skip


@contextmanager
def running_agent(model_dir: Path, data_dir: Path, *flags: str) -> Iterator[subprocess.Popen]:
    env = {**ENV, "TANDEM_AGENT_HARD_EXAMPLES_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen(
        agent_cmd(model_dir, *flags), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stderr.readline() if proc.stderr else ""
            if not line:
                raise AssertionError(f"the first agent exited ({proc.wait(5)})")
            if line.startswith("tandem-agent: serving"):
                break
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def second_agent(model_dir: Path, data_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**ENV, "TANDEM_AGENT_HARD_EXAMPLES_DATA_DIR": str(data_dir)}
    return subprocess.run(
        agent_cmd(model_dir, *flags), capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, env=env
    )


def infer(endpoint: str, tmp_path: Path) -> subprocess.CompletedProcess:
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.edge_agent.cli",
            "infer",
            "--input",
            str(tmp_path / "x.npy"),
            "--endpoint",
            endpoint,
        ],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
    )


def test_a_second_agent_on_a_taken_ipc_socket_fails_and_the_first_keeps_serving(model_dir, tmp_path):
    endpoint = f"ipc://{tmp_path}/agent.sock"
    with running_agent(model_dir, tmp_path / "a", "--endpoint", endpoint):
        second = second_agent(model_dir, tmp_path / "b", "--endpoint", endpoint)
        assert second.returncode == 2, second.stderr
        assert f"server.endpoint: {endpoint} is taken: another agent is listening there" in second.stderr
        assert "--endpoint ipc://PATH or tcp://127.0.0.1:PORT" in second.stderr
        assert infer(endpoint, tmp_path).returncode == 0  # the first agent still has its socket
    # a socket file left behind by a crashed agent is not "taken": a new agent starts on it
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
        left.bind(str(stale))  # the file stays, nobody listens
    assert stale.is_socket()
    with running_agent(model_dir, tmp_path / "c", "--endpoint", f"ipc://{stale}"):
        assert infer(f"ipc://{stale}", tmp_path).returncode == 0


def test_a_second_agent_on_a_taken_tcp_port_or_health_port_names_it_and_the_flag(model_dir, tmp_path):
    endpoint, health = f"tcp://127.0.0.1:{free_port()}", free_port()
    with running_agent(model_dir, tmp_path / "a", "--endpoint", endpoint, "--http-port", str(health)):
        second = second_agent(model_dir, tmp_path / "b", "--endpoint", endpoint)
        assert second.returncode == 2 and f"cannot bind {endpoint}" in second.stderr, second.stderr
        assert "--endpoint" in second.stderr
        other = f"ipc://{tmp_path}/b.sock"
        third = second_agent(model_dir, tmp_path / "c", "--endpoint", other, "--http-port", str(health))
        assert third.returncode == 2, third.stderr
        assert f"cannot listen on 127.0.0.1:{health}" in third.stderr and "--http-port PORT" in third.stderr
        assert infer(endpoint, tmp_path).returncode == 0


def test_a_second_agent_on_a_data_dir_in_use_names_it_and_the_setting(model_dir, tmp_path):
    """Two agents on one state folder would number windows from one outbox; the second is refused."""
    shared = tmp_path / "state"
    with running_agent(model_dir, shared, "--endpoint", f"ipc://{tmp_path}/a.sock") as first:
        second = second_agent(model_dir, shared, "--endpoint", f"ipc://{tmp_path}/b.sock")
        assert second.returncode == 2, second.stderr
        assert f"{shared} is in use by another agent (pid {first.pid})" in second.stderr
        assert "[hard_examples] data_dir" in second.stderr
        assert infer(f"ipc://{tmp_path}/a.sock", tmp_path).returncode == 0
    # the lock dies with its holder: the same folder serves again once the first agent stopped
    with running_agent(model_dir, shared, "--endpoint", f"ipc://{tmp_path}/c.sock"):
        assert infer(f"ipc://{tmp_path}/c.sock", tmp_path).returncode == 0
