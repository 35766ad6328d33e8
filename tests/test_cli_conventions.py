"""One --log-level convention on every tandem-* command: the same flag, any case, before or after the subcommand."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tandem.protocols.cli_options import log_level_of

CLIS = {
    "tandem-agent": "tandem.edge_agent.cli",
    "tandem-hub": "tandem.cloud_hub.cli",
    "tandem-compile": "tandem.model_compiler.cli",
    "tandem-sim": "tandem.sim.cli",
}
# (cli, the words of one command that parses without running anything, its default level)
COMMANDS = [
    ("tandem-agent", ["infer", "--input", "x.npy"], "warning"),
    ("tandem-hub", ["serve"], "info"),
    ("tandem-hub", ["devices", "list"], "warning"),
    ("tandem-hub", ["ota", "status"], "warning"),
    ("tandem-compile", ["model.onnx"], "warning"),
    ("tandem-sim", ["list"], "error"),
]


def parser_of(cli: str):
    module = __import__(CLIS[cli], fromlist=["build_parser"])
    return module.build_parser()


@pytest.mark.parametrize("cli,words,default", COMMANDS)
def test_log_level_is_taken_in_any_case_before_or_after_the_subcommand(cli, words, default):
    parser = parser_of(cli)
    head, tail = words[:1], words[1:]
    assert log_level_of(parser.parse_args(words)) == default
    assert log_level_of(parser.parse_args(["--log-level", "DEBUG", *words])) == "debug"
    assert log_level_of(parser.parse_args([*words, "--log-level", "Error"])) == "error"
    assert log_level_of(parser.parse_args([*head, "--log-level=info", *tail])) == "info"
    # Given twice, the later one wins (as with any flag), and the subcommand's default never resets a given level.
    assert log_level_of(parser.parse_args(["--log-level", "debug", *words, "--log-level", "WARNING"])) == "warning"


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_an_unknown_level_is_refused_by_name_on_every_command(cli):
    words = {"tandem-agent": ["status"], "tandem-hub": ["devices", "list"], "tandem-compile": ["profiles"]}.get(
        cli, ["list"]
    )
    for argv in (["--log-level", "loud", *words], [*words, "--log-level", "loud"]):
        done = subprocess.run(
            [sys.executable, "-m", CLIS[cli], *argv], capture_output=True, text=True, timeout=60, env=dict(os.environ)
        )
        assert done.returncode == 2, (cli, argv, done.stderr)
        assert "'loud' is not a log level: use one of debug, info, warning, error (any case)" in done.stderr, (
            done.stderr
        )


def test_a_level_given_before_the_command_reaches_the_libraries_logs():
    """tandem-hub --log-level DEBUG ... shows httpx's debug lines: the level is applied, not only parsed."""
    argv = ["devices", "list", "--url", "http://127.0.0.1:1", "--token", "x"]
    quiet = subprocess.run(
        [sys.executable, "-m", CLIS["tandem-hub"], *argv], capture_output=True, text=True, timeout=60
    )
    loud = subprocess.run(
        [sys.executable, "-m", CLIS["tandem-hub"], "--log-level", "DEBUG", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "DEBUG" not in quiet.stderr
    assert "DEBUG httpcore" in loud.stderr, loud.stderr


def test_tandem_compile_version_alone_prints_the_tools_version():
    import tandem

    done = subprocess.run(
        [sys.executable, "-m", CLIS["tandem-compile"], "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == f"tandem-compile {tandem.__version__}", done
