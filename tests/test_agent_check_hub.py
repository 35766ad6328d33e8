"""`tandem-agent check` asks the fallback hub whether it serves the model the agent will ask for: a hub that
answers NOT_FOUND is a configuration error (exit 2) naming what the hub serves and both fixes, never "ok".

A real `tandem-hub serve --model-dir` answers the real `tandem-agent check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from agent_fixtures import free_port, make_linear_softmax, make_model_dir
from hub_process_fixtures import serve_hub

HUB_FLAGS = ("--mqtt-url", "mqtt://127.0.0.1:1", "--no-telemetry", "--no-rollouts", "--http-port", "0")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pair")
    edge = make_model_dir(make_linear_softmax(root / "edge.onnx", 4, 3, seed=0), root / "edge", name="digits-edge")
    cloud = make_model_dir(make_linear_softmax(root / "cloud.onnx", 4, 3, seed=1), root / "cloud", name="digits-cloud")
    return {"edge": edge, "cloud": cloud}


@pytest.fixture(scope="module")
def hub_grpc(models, tmp_path_factory) -> Iterator[str]:
    with serve_hub(
        tmp_path_factory.mktemp("hub") / "data", "--model-dir", str(models["cloud"]), "--grpc-port", "0", *HUB_FLAGS
    ) as urls:
        yield urls["grpc"]


def check(config: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tandem.edge_agent.cli", "check", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TANDEM_AGENT_TRUST_ALLOW_UNSIGNED": "true", **env},
    )


def agent_toml(tmp_path: Path, model_dir: Path, hub_url: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[model]\ndir = "{model_dir}"\n[fallback]\nhub_url = "{hub_url}"\n')
    return path


def test_a_hub_that_does_not_serve_the_agents_model_fails_check_with_both_fixes(models, hub_grpc, tmp_path):
    done = check(agent_toml(tmp_path, models["edge"], hub_grpc))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert not done.stdout.startswith("ok"), done.stdout
    err = done.stderr.strip()
    assert "the hub does not serve 'digits-edge', the model this agent asks it for" in err, err
    assert f"hub at {hub_grpc} serves digits-cloud" in err, err
    assert 'Set [fallback] hub_model = "digits-cloud"' in err and "--alias digits-edge=digits-cloud" in err, err
    as_json = check(agent_toml(tmp_path, models["edge"], hub_grpc), "--json")
    assert as_json.returncode == 2
    hub = json.loads(as_json.stdout)["hub"]
    assert hub["status"] == "not_found" and hub["served"] == ["digits-cloud"] and hub["model"] == "digits-edge"


def test_the_fix_it_names_makes_check_pass(models, hub_grpc, tmp_path):
    done = check(agent_toml(tmp_path, models["edge"], hub_grpc), TANDEM_AGENT_FALLBACK_HUB_MODEL="digits-cloud")
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.startswith("ok: digits-edge")
        and f"fallback: hub at {hub_grpc} serves 'digits-cloud'" in done.stdout
    )


def test_a_hub_that_is_down_is_a_warning_not_a_configuration_error(models, tmp_path):
    url = f"127.0.0.1:{free_port()}"
    done = check(agent_toml(tmp_path, models["edge"], url), "--hub-timeout", "2")
    assert done.returncode == 0, done.stderr
    assert f"WARNING: fallback hub at {url} does not answer now (UNAVAILABLE" in done.stdout, done.stdout
    offline = check(agent_toml(tmp_path, models["edge"], url), "--no-hub")
    assert offline.returncode == 0 and "fallback" not in offline.stdout, offline.stdout
