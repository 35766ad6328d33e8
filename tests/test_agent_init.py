"""`tandem-agent init` against a real hub (REST, Mosquitto, SQLite), and the agent's own footprint:
a failed start leaves nothing behind, `infer --config` finds the config's endpoint, `~` paths resolve."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from agent_fixtures import free_port, make_linear_softmax, make_model_dir
from tandem.edge_agent.config import AgentConfig
from tandem.edge_agent.errors import ModelLoadError
from tandem.edge_agent.init_config import MAX_IPC_PATH, InitError, InitRequest, choose_health_port, join

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make test installs it)")
    root = tmp_path_factory.mktemp("init-hub")
    env = {
        "TANDEM_HUB_DATA_DIR": str(root / "hub"),
        "TANDEM_HUB_HTTP_PORT": "0",
        "TANDEM_HUB_GRPC_PORT": "0",
        "TANDEM_HUB_MQTT_PORT": str(free_port()),
    }
    hub = Hub(HubConfig.load(None, env=env))
    try:
        hub.start()
        hub.test_admin = hub.tokens.create("ops", "admin").token  # type: ignore[attr-defined]
        hub.test_operate = hub.tokens.create("ci", "operate").token  # type: ignore[attr-defined]
        hub.test_read = hub.tokens.create("grafana", "read").token  # type: ignore[attr-defined]
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return make_model_dir(make_linear_softmax(tmp_path / "m.onnx"), tmp_path / "model", name="digits-edge")


def _get(hub: object, path: str) -> dict:
    req = urllib.request.Request(hub.http_url + path, headers={"Authorization": f"Bearer {hub.test_admin}"})  # type: ignore[attr-defined]
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_init_registers_the_device_and_writes_a_config_that_loads(hub: object, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "site" / "cam-1.toml"
    result = join(
        InitRequest(
            hub=hub.http_url,  # type: ignore[attr-defined]
            token=hub.test_admin,  # type: ignore[attr-defined]
            out=out,
            model_dir=model_dir,
            device_id="cam-1",
            tags={"site": "lab"},
        )
    )
    config = AgentConfig.load(out, env={})
    assert config.server.device_id == "cam-1" and config.server.tags == {"site": "lab"}
    assert config.model.dir == model_dir.resolve()
    # in the agent's data dir, unless that path is too long for a unix socket (a long temp dir: a long user
    # name in /tmp/pytest-of-USER, or --basetemp), then in the runtime dir under the device's name
    in_data_dir = f"{out.parent.resolve()}/cam-1-data/agent.sock"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    want = in_data_dir if len(in_data_dir) <= MAX_IPC_PATH else f"{runtime_dir}/tandem-agent-cam-1.sock"
    assert config.server.endpoint == f"ipc://{want}"
    assert config.hard_examples.data_dir == out.parent.resolve() / "cam-1-data"
    assert config.telemetry.mqtt_url == hub.urls()["mqtt"]  # type: ignore[attr-defined]
    assert config.ota.enabled and config.ota.trusted_key == result.release_key_path
    assert result.release_key_path in config.trust.keys
    assert result.release_key_path.read_text() == hub.key.public_pem  # type: ignore[attr-defined]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    # an admin caller gets the device a token of its own, scoped to it
    assert result.device_token == "device" and config.ota.hub_token != hub.test_admin  # type: ignore[attr-defined]
    device = _get(hub, "/v1/devices/cam-1")
    assert (
        device["profile"] == "cpu-x86" and device["model_name"] == "digits-edge" and device["tags"] == {"site": "lab"}
    )
    assert not (tmp_path / "site" / "cam-1-data").exists(), "init writes the config, the agent makes its data dir"


def test_two_agents_initialised_on_one_host_get_their_own_socket_and_health_port(
    hub: object, model_dir: Path, tmp_path: Path
) -> None:
    with socket.socket() as held:  # something (another agent) already listens on the default port
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert choose_health_port(preferred=taken) != taken
        assert choose_health_port(preferred=free_port()) != taken
    configs = []
    for device in ("cam-a", "cam-b"):
        out = tmp_path / f"{device}.toml"
        join(InitRequest(hub.http_url, hub.test_operate, out, model_dir, device_id=device))  # type: ignore[attr-defined]
        configs.append(AgentConfig.load(out, env={}))
    assert configs[0].server.endpoint != configs[1].server.endpoint
    assert configs[0].hard_examples.data_dir != configs[1].hard_examples.data_dir
    # an operate caller cannot mint tokens: its own token is written, and said so
    assert configs[0].ota.hub_token == hub.test_operate  # type: ignore[attr-defined]


def test_init_refuses_what_it_cannot_do_and_names_it(hub: object, model_dir: Path, tmp_path: Path) -> None:
    url, admin = hub.http_url, hub.test_admin  # type: ignore[attr-defined]
    with pytest.raises(InitError, match=r"POST .*/v1/devices: HTTP 403"):
        join(InitRequest(url, hub.test_read, tmp_path / "r.toml", model_dir, device_id="cam-r"))  # type: ignore[attr-defined]
    assert not (tmp_path / "r.toml").exists()
    with pytest.raises(InitError, match="HTTP 401"):
        join(InitRequest(url, "tdm_nope_nope", tmp_path / "x.toml", model_dir, device_id="cam-x"))
    with pytest.raises(InitError, match="no manifest.json"):
        join(InitRequest(url, admin, tmp_path / "x.toml", tmp_path, device_id="cam-x"))
    with pytest.raises(InitError, match="--device-id"):
        join(InitRequest(url, admin, tmp_path / "x.toml", model_dir, device_id="a/b"))
    with pytest.raises(InitError, match=r"connection refused, nothing listens there; .* point --hub"):
        join(InitRequest(f"http://127.0.0.1:{free_port()}", admin, tmp_path / "x.toml", model_dir, device_id="c"))
    # the wording every Tandem client shares (protocols/http_errors.py): https:// against a plain hub
    with pytest.raises(InitError, match=r"the hub speaks plain HTTP, not TLS; use http://"):
        join(InitRequest(url.replace("http://", "https://"), admin, tmp_path / "x.toml", model_dir, device_id="c"))
    (tmp_path / "taken.toml").write_text("# mine\n")
    with pytest.raises(InitError, match="exists; pass --force"):
        join(InitRequest(url, admin, tmp_path / "taken.toml", model_dir, device_id="cam-t"))
    assert (tmp_path / "taken.toml").read_text() == "# mine\n"


def test_a_failed_run_leaves_nothing_under_the_data_dir(tmp_path: Path) -> None:
    from tandem.edge_agent.agent import Agent

    fresh = tmp_path / "state" / "tandem-agent"  # neither folder exists yet
    config = AgentConfig.from_keys({"model.dir": tmp_path / "no-model", "hard_examples.data_dir": fresh})
    with pytest.raises(ModelLoadError):
        Agent(config).start()
    assert not (tmp_path / "state").exists()

    used = tmp_path / "used"  # a data dir that holds the operator's files: they stay, nothing is added
    used.mkdir()
    (used / "notes.txt").write_text("keep")
    config = AgentConfig.from_keys({"model.dir": tmp_path / "no-model", "hard_examples.data_dir": used})
    with pytest.raises(ModelLoadError):
        Agent(config).start()
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]


def test_infer_with_config_sends_to_the_configs_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tandem.edge_agent.agent import Agent
    from tandem.edge_agent.cli import main

    model = make_model_dir(make_linear_softmax(tmp_path / "m.onnx"), tmp_path / "model")
    endpoint = f"ipc://{tmp_path}/own.sock"
    (tmp_path / "agent.toml").write_text(
        f'[model]\ndir = "model"\n[server]\nendpoint = "{endpoint}"\n[trust]\nallow_unsigned = true\n'
        '[hard_examples]\ndata_dir = "state"\n'
    )
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    with Agent(AgentConfig.load(tmp_path / "agent.toml", env={})) as agent:
        assert agent.endpoint == endpoint and model.exists()
        assert main(["infer", "--config", str(tmp_path / "agent.toml"), "--input", str(tmp_path / "x.npy")]) == 0
    assert "row 0: label" in capsys.readouterr().out


def test_a_leading_tilde_in_a_config_path_is_the_home_folder() -> None:
    config = AgentConfig.from_keys({"model.dir": "~/models/digits", "trust.keys": ["~/.tandem/keys/p.pub.pem"]})
    assert config.model.dir == Path.home() / "models" / "digits"
    assert config.trust.keys == (Path.home() / ".tandem" / "keys" / "p.pub.pem",)


def test_example_agent_toml_needs_no_root() -> None:
    """Every path in examples/agent/agent.toml is under the repo or the home folder."""
    config = AgentConfig.load(Path(__file__).resolve().parents[1] / "examples" / "agent" / "agent.toml", env={})
    home, repo = Path.home(), Path(__file__).resolve().parents[1]
    paths = [config.model.dir, config.hard_examples.data_dir, config.model_store_dir, *config.trusted_key_files]
    for path in paths:
        assert path.resolve().is_relative_to(repo) or path.is_relative_to(home), path
    assert config.server.endpoint.startswith("ipc://") and "/run/tandem" not in config.server.endpoint
