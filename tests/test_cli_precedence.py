"""One precedence rule on the daemons' command lines: flag > environment variable > config file > default.

`tandem-agent check --config a.toml --model-dir X` serves X, whatever the file and TANDEM_AGENT_MODEL_DIR say;
`tandem-hub serve --config hub.toml --http-port P` listens on P over TANDEM_HUB_HTTP_PORT and the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from agent_fixtures import free_port, make_linear_softmax, make_model_dir
from hub_process_fixtures import serve_hub


def agent_check(*argv: str, **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "tandem.edge_agent.cli", "check", "--json", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TANDEM_AGENT_TRUST_ALLOW_UNSIGNED": "true", **env},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_agent_flags_beat_the_environment_which_beats_the_file(tmp_path):
    dirs = {
        name: make_model_dir(make_linear_softmax(tmp_path / f"{name}.onnx"), tmp_path / name, name=name)
        for name in ("from-file", "from-env", "from-flag")
    }
    config = tmp_path / "agent.toml"
    config.write_text(f'[model]\ndir = "{dirs["from-file"]}"\n[server]\nendpoint = "ipc://{tmp_path}/file.sock"\n')
    assert agent_check("--config", str(config))["model"] == "from-file"
    env = {
        "TANDEM_AGENT_MODEL_DIR": str(dirs["from-env"]),
        "TANDEM_AGENT_SERVER_ENDPOINT": f"ipc://{tmp_path}/env.sock",
    }
    seen = agent_check("--config", str(config), **env)
    assert (seen["model"], seen["endpoint"]) == ("from-env", f"ipc://{tmp_path}/env.sock")
    seen = agent_check(
        "--config",
        str(config),
        "--model-dir",
        str(dirs["from-flag"]),
        "--endpoint",
        f"ipc://{tmp_path}/flag.sock",
        **env,
    )
    assert (seen["model"], seen["endpoint"]) == ("from-flag", f"ipc://{tmp_path}/flag.sock")


@pytest.mark.slow  # three tandem-hub serve processes: 13.2 s at load 8
def test_hub_serve_flags_beat_the_environment_which_beats_the_file(tmp_path):
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    config = tmp_path / "hub.toml"
    config.write_text(f"[http]\nport = {file_port}\n")
    quiet = ("--mqtt-url", "mqtt://127.0.0.1:1", "--no-telemetry", "--no-rollouts", "--grpc-port", "0")
    env = {**os.environ, "TANDEM_HUB_HTTP_PORT": str(env_port)}

    def port(urls: dict[str, str]) -> int | None:
        return urlsplit(urls["http"]).port

    with serve_hub(tmp_path / "a", "--config", str(config), *quiet) as urls:
        assert port(urls) == file_port
    with serve_hub(tmp_path / "b", "--config", str(config), *quiet, env=env) as urls:
        assert port(urls) == env_port
    with serve_hub(tmp_path / "c", "--config", str(config), "--http-port", str(flag_port), *quiet, env=env) as urls:
        assert port(urls) == flag_port


def test_every_help_says_the_same_precedence_rule():
    from tandem.protocols.cli_options import PRECEDENCE

    for module in ("tandem.edge_agent.cli", "tandem.cloud_hub.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
        assert PRECEDENCE in " ".join(done.stdout.split()), (module, done.stdout[-600:])
