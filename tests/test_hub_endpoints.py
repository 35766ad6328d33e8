"""The hub's MQTT port is chosen once and kept in the data dir; listen addresses and --version by flag."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

import tandem
from tandem.cloud_hub.endpoints import MQTT_DEFAULT_PORT, PORT_FILE, stable_mqtt_port

ROOT = Path(__file__).resolve().parents[1]


def test_an_explicit_port_wins_and_records_nothing(tmp_path):
    assert stable_mqtt_port(tmp_path, "127.0.0.1", 18830) == 18830
    assert not (tmp_path / PORT_FILE).exists()


def test_the_port_chosen_on_first_start_is_kept_across_restarts(tmp_path):
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # make 1883 busy (or find it busy already): the hub must choose another, once. SO_REUSEADDR so a
        # connection of an earlier test in TIME_WAIT on 1883 cannot stop us holding it (the hub's check allows those)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", MQTT_DEFAULT_PORT))
            holder.listen()
        except OSError:
            pass
        first = stable_mqtt_port(tmp_path, "127.0.0.1")
        assert first != MQTT_DEFAULT_PORT and 0 < first < 65536
    finally:
        holder.close()
    assert (tmp_path / PORT_FILE).read_text().strip() == str(first)
    # 1883 may be free now; the recorded port still wins, so configured agents keep working
    assert stable_mqtt_port(tmp_path, "127.0.0.1") == first


def test_a_fresh_data_dir_takes_1883_when_it_is_free(tmp_path):
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", MQTT_DEFAULT_PORT))
    except OSError:
        pytest.skip("something on this host listens on 1883")
    finally:
        probe.close()
    assert stable_mqtt_port(tmp_path / "data", "127.0.0.1") == MQTT_DEFAULT_PORT
    assert (tmp_path / "data" / PORT_FILE).read_text().strip() == str(MQTT_DEFAULT_PORT)


def test_a_garbled_record_is_chosen_anew(tmp_path):
    (tmp_path / PORT_FILE).write_text("not a port\n")
    port = stable_mqtt_port(tmp_path, "127.0.0.1")
    assert (tmp_path / PORT_FILE).read_text().strip() == str(port)


def test_serve_takes_listen_addresses_and_ports_by_flag():
    from tandem.cloud_hub.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--grpc-host", "0.0.0.0", "--mqtt-host", "0.0.0.0", "--mqtt-port", "8883"]
    )
    assert (args.grpc_host, args.mqtt_host, args.mqtt_port) == ("0.0.0.0", "0.0.0.0", 8883)


@pytest.mark.parametrize("module", ["tandem.cloud_hub.cli", "tandem.edge_agent.cli", "tandem.sim.cli"])
def test_every_daemon_cli_says_its_version(module):
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(tandem.__version__), proc.stdout


def _leaves(parser, path=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, path + (name,))


def test_every_subcommand_that_talks_to_the_hub_takes_url_token_and_ca():
    from tandem.cloud_hub.cli import build_parser

    remote = []
    for path, parser in _leaves(build_parser()):
        flags = {s for a in parser._actions for s in a.option_strings}
        if "--url" in flags:
            remote.append(" ".join(path))
            assert {"--token", "--ca"} <= flags, (path, sorted(flags))
    assert "ota rollout start" in remote and "devices list" in remote, remote
    args = build_parser().parse_args(
        ["ota", "rollout", "start", "--model", "m", "--version", "1.0.0", "--ca", "ca.crt"]
    )
    assert str(args.ca) == "ca.crt"


def test_model_aliases_by_flag_config_and_env():
    from tandem.cloud_hub.cli import build_parser
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.errors import ConfigError

    args = build_parser().parse_args(["serve", "--alias", "digits-edge=digits-cloud", "--alias", "ocr-edge=ocr"])
    config = HubConfig.load(None, env={}, overrides={"models.aliases": tuple(args.model_aliases)})
    assert config.models.alias_map() == {"digits-edge": "digits-cloud", "ocr-edge": "ocr"}
    assert HubConfig.load(None, env={"TANDEM_HUB_MODELS_ALIASES": "a=b"}).models.alias_map() == {"a": "b"}
    for bad in ("digits-edge", "=x", "a=a"):
        with pytest.raises(ConfigError, match="ASKED=SERVED"):
            HubConfig.from_keys({"models.aliases": (bad,)})
