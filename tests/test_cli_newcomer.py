"""A newcomer's first mistakes on the tandem-* commands: every leaf command explains itself in --help, and a
wrong path, a missing config or a typo'd data dir gets one line naming what was wrong, never a traceback."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.protocols.cli_options import os_error_line

CLIS = {
    "tandem-agent": "tandem.edge_agent.cli",
    "tandem-hub": "tandem.cloud_hub.cli",
    "tandem-compile": "tandem.model_compiler.cli",
    "tandem-sim": "tandem.sim.cli",
}


def _leaves(parser: argparse.ArgumentParser, path: list[str]):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, [*path, name])


def _all_leaves():
    for cli, module in CLIS.items():
        yield from _leaves(importlib.import_module(module).build_parser(), [cli])


@pytest.mark.parametrize("name,parser", list(_all_leaves()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_leaf_command_says_what_it_does_and_shows_a_call(name, parser):
    assert parser.description, f"{name} --help has no description"
    epilog = parser.epilog or ""
    assert "example" in epilog and name.split()[0] in epilog, f"{name} --help shows no example call"
    undocumented = [a.dest for a in parser._actions if a.help is None and not isinstance(a, argparse._SubParsersAction)]
    assert not undocumented, f"{name}: arguments without help: {undocumented}"
    silent = [
        a.dest
        for a in parser._actions
        if a.default not in (None, False, argparse.SUPPRESS, [], ())
        and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
        and "default" not in (a.help or "").lower()
    ]
    assert not silent, f"{name}: arguments whose help does not say their default: {silent}"


def _run(cli: str, *argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_HUB_", "TANDEM_AGENT_"))}
    return subprocess.run(
        [sys.executable, "-m", CLIS[cli], *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=clean | {"TANDEM_HOME": str(cwd / "home"), **env},
    )


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines, done
    return lines[-1]


@pytest.mark.parametrize(
    "cli,argv",
    [
        ("tandem-hub", ["serve", "--data-dir", "taken", "--http-port", "0", "--grpc-port", "0"]),
        ("tandem-hub", ["pki", "init", "--dir", "taken"]),
        ("tandem-sim", ["demo", "--workdir", "taken", "--quiet"]),
    ],
    ids=["hub-serve-data-dir", "hub-pki-init-dir", "sim-demo-workdir"],
)
def test_a_file_where_a_folder_must_be_is_named_in_one_line(tmp_path, cli, argv):
    """Seen failing before: FileExistsError / NotADirectoryError tracebacks."""
    (tmp_path / "taken").write_text("a file, not a folder")
    done = _run(cli, *argv, cwd=tmp_path)
    assert done.returncode == 1
    assert _one_line(done).endswith("taken: is a file, not a folder"), done.stderr


def test_agent_run_and_status_without_a_config_say_what_to_give(tmp_path):
    """Seen failing before: both said only `model: required`."""
    run = _run("tandem-agent", "run", cwd=tmp_path)
    assert run.returncode == 2
    line = _one_line(run)
    assert "--config agent.toml" in line and "--model-dir" in line and "TANDEM_AGENT_MODEL_DIR" in line, line
    status = _run("tandem-agent", "status", cwd=tmp_path)
    assert status.returncode == 1
    assert "--config agent.toml" in _one_line(status) and "--url" in _one_line(status)
    # with only the health port given, status asks it (no config, no model needed)
    asked = _run("tandem-agent", "status", "--http-port", "1", cwd=tmp_path)
    assert asked.returncode == 1 and "no agent answers at http://127.0.0.1:1" in _one_line(asked)


def test_a_config_without_a_model_section_names_model_dir(tmp_path):
    from tandem.edge_agent.config import AgentConfig
    from tandem.edge_agent.errors import ConfigError

    (tmp_path / "agent.toml").write_text('[server]\nendpoint = "tcp://127.0.0.1:5555"\n')
    with pytest.raises(ConfigError, match=r"model\.dir: required \(or set TANDEM_AGENT_MODEL_DIR\)"):
        AgentConfig.load(tmp_path / "agent.toml")


def test_a_missing_hub_config_is_named_once(tmp_path, capsys):
    from tandem.cloud_hub.cli import main

    assert main(["serve", "--config", str(tmp_path / "nope.toml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"tandem-hub: error: {tmp_path / 'nope.toml'}: cannot read the config (No such file or directory)"


def test_publishers_list_refuses_a_data_dir_that_does_not_exist(tmp_path, capsys):
    """Seen failing before: a typo'd --data-dir listed 'no trusted publishers' and exited 0."""
    from tandem.cloud_hub.cli import main

    assert main(["publishers", "list", "--data-dir", str(tmp_path / "tandem-dta")]) == 1
    assert "tandem-dta: no such data dir" in capsys.readouterr().err
    assert main(["publishers", "remove", "0123456789abcdef", "--data-dir", str(tmp_path / "tandem-dta")]) == 1


def test_os_error_line_names_the_path_and_the_problem(tmp_path):
    (tmp_path / "f").write_text("")
    below = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(tmp_path / "f" / "ca.key.tmp"))
    assert os_error_line(below) == f"{tmp_path / 'f'}: is a file, not a folder"
    exists = FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(tmp_path / "f"))
    assert os_error_line(exists) == f"{tmp_path / 'f'}: is a file, not a folder"
    denied = PermissionError(errno.EACCES, "Permission denied", "/root/x")
    assert os_error_line(denied) == "/root/x: Permission denied"
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"


class _NotAnAgent:
    """A loopback port that answers like something else: `http` a JSON /healthz without an agent's fields (the
    hub's), else bytes that are not HTTP at all (a gRPC or MQTT port)."""

    def __init__(self, http: bool) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        body = b'{"status": "ok"}'
        self.answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            if http
            else b"\x00\x00\x06\x04\x00\x00\x00\x00\x00garbage"
        )
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("http", [True, False], ids=["json-healthz", "not-http"])
def test_agent_status_at_a_port_that_is_not_an_agent_says_so(http, capsys):
    """Seen failing before: the hub's URL printed 'ok: device None serves None None', exit 0; a gRPC port a
    BadStatusLine traceback."""
    from tandem.edge_agent.cli import main

    other = _NotAnAgent(http)
    try:
        assert main(["status", "--url", f"http://127.0.0.1:{other.port}", "--timeout", "5"]) == 1
    finally:
        other.close()
    assert "does not answer as an agent's health server" in capsys.readouterr().err


def test_agent_init_at_a_port_that_is_not_the_hubs_rest_says_so(tmp_path, capsys):
    """Seen failing before: http.client.BadStatusLine traceback when --hub named the hub's gRPC port."""
    from agent_fixtures import make_linear_softmax, make_model_dir
    from tandem.edge_agent.cli import main

    model = make_model_dir(make_linear_softmax(tmp_path / "m.onnx"), tmp_path / "model")
    other = _NotAnAgent(http=False)
    try:
        argv = ["init", "--hub", f"http://127.0.0.1:{other.port}", "--token", "tdm_x", "--model-dir", str(model)]
        assert main([*argv, "--out", str(tmp_path / "agent.toml")]) == 2
    finally:
        other.close()
    err = capsys.readouterr().err
    assert "not an HTTP answer" in err and "the hub's REST URL" in err, err


def test_agent_infer_refuses_an_endpoint_zeromq_cannot_use_and_a_timeout_of_zero(tmp_path, capsys):
    """Seen failing before: a zmq.error.ZMQError traceback; --timeout 0 waited 0 s and blamed the agent."""
    import numpy as np

    from tandem.edge_agent.cli import main

    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    assert main(["infer", "--endpoint", "localhost:5555", "--input", str(tmp_path / "x.npy")]) == 2
    assert "endpoint 'localhost:5555'" in capsys.readouterr().err
    for bad in ("0", "-1", "inf"):
        with pytest.raises(SystemExit) as exit_:
            main(["infer", "--input", str(tmp_path / "x.npy"), "--timeout", bad])
        assert exit_.value.code == 2
        assert "give a positive, finite number of seconds" in capsys.readouterr().err


def test_ctrl_c_while_agent_infer_waits_exits_130_without_a_traceback(tmp_path):
    """Seen failing before: a KeyboardInterrupt traceback out of zmq's recv."""
    import signal
    import socket

    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    silent = socket.create_server(("127.0.0.1", 0))  # takes the connection, never answers
    silent.settimeout(60)
    port = silent.getsockname()[1]
    argv = ["infer", "--endpoint", f"tcp://127.0.0.1:{port}", "--input", str(tmp_path / "x.npy"), "--timeout", "60"]
    proc = subprocess.Popen(
        [sys.executable, "-m", CLIS["tandem-agent"], *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        conn, _ = silent.accept()  # the command is past its imports and waiting on the agent
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        conn.close()
    finally:
        proc.kill()
        silent.close()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "tandem-agent: interrupted"


def test_tokens_create_with_a_token_asks_a_hub_and_writes_no_local_data_dir(tmp_path, monkeypatch, capsys):
    """Seen failing before: `tokens create --token T` without a URL wrote the new token into a fresh
    ./tandem-data that no running hub reads, exit 0."""
    from tandem.cloud_hub import client
    from tandem.cloud_hub.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("TANDEM_HUB_URL", "TANDEM_HUB_TOKEN", "TANDEM_HUB_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client, "DEFAULT_URL", "http://127.0.0.1:1")  # the default URL, where nothing listens
    assert main(["tokens", "create", "--scope", "read", "--name", "ci", "--token", "tdm_x"]) == 1
    assert "cannot reach the hub at http://127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "tandem-data").exists()
    assert main(["tokens", "create", "--scope", "admin", "--name", "me"]) == 0  # the first admin token: local
    assert (tmp_path / "tandem-data").is_dir()


def test_a_scenario_whose_devices_are_not_a_list_says_what_it_got(tmp_path):
    """Seen failing before: 'devices: required: ...' for a key that was there, with the wrong type."""
    from tandem.sim.scenario import ScenarioError, load_scenario

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nduration_s: 10\ndevices: many\n")
    with pytest.raises(ScenarioError, match="devices: required: a non-empty list of device groups, got 'many'"):
        load_scenario(str(path))
