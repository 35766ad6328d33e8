"""The one config loader (protocols/config_loader.py) the agent and the hub share: type hints drive coercion,
one env rule, unknown keys and variables answered with the closest key."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from tandem.protocols import config_loader as cl
from tandem.protocols.errors import ContractError


@dataclass(frozen=True)
class Net:
    port: int = 80
    mode: Literal["a", "b"] = "a"
    peers: tuple[Path, ...] = ()
    token: str | None = None


@dataclass(frozen=True)
class App:
    name: str
    net: Net = field(default_factory=Net)


def test_values_are_coerced_from_their_hints_and_env_wins_over_the_file():
    env = {"T_NET_PORT": "8080", "T_NET_PEERS": "/a:/b", "T_NET_TOKEN": "none", "T_NAME": ""}
    app = cl.build(App, {"name": "x", "net": {"token": "s", "mode": "b"}}, env=env, prefix="T_")
    assert app == App("x", Net(8080, "b", (Path("/a"), Path("/b")), None))  # "" on a required key: no value


@pytest.mark.parametrize(
    "data, env, message",
    [
        ({"name": "x", "net": {"prot": 1}}, {}, "net.prot: unknown key (did you mean 'port'?"),
        ({"name": "x", "net": {"port": "80"}}, {}, "net.port: expected an integer"),  # a TOML string is not a port
        ({"name": "x"}, {"T_NET_PORT": "eighty"}, "net.port (from T_NET_PORT): expected an integer"),
        ({"name": "x", "net": {"mode": "c"}}, {}, "net.mode: 'c' is not one of a, b"),
        ({}, {}, "name: required"),
    ],
)
def test_errors_name_the_dotted_key_and_the_variable(data, env, message):
    with pytest.raises(cl.ConfigValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        cl.build(App, data, env=env, prefix="T_")
    assert isinstance(caught.value, ContractError) and isinstance(caught.value, ValueError)


def test_unknown_variables_are_logged_with_the_closest_key(caplog):
    with caplog.at_level(logging.WARNING, logger="tandem.protocols.config_loader"):
        stray = cl.unknown_env(
            App, {"T_NET_PROT": "1", "T_NET_PORT": "2", "T_URL": "x", "OTHER": "y"}, "T_", also=("T_URL",)
        )
    assert stray == ["T_NET_PROT"] and "did you mean T_NET_PORT?" in caplog.text


def test_dotted_keys_nest_as_toml_reads_them_and_override_coerces():
    assert cl.nest({"net.port": 1, "name": "x"}) == {"net": {"port": 1}, "name": "x"}
    app = cl.override(App("x"), {"net.port": 9, "net.peers": ["/p"]})
    assert app.net.port == 9 and app.net.peers == (Path("/p"),)
    assert cl.section_keys(App) == {"": ("name",), "net": ("port", "mode", "peers", "token")}
