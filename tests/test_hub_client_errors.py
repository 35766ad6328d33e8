"""`tandem-hub` remote commands say what is wrong, in one line naming the URL and the fix, instead of
"is tandem-hub serve running?": http:// against a TLS hub, https:// against a plain one, a CA that does not
verify the hub, a wrong or missing token, a token with too small a scope, nothing listening.

Two real hubs (`tandem-hub serve`, one with `--tls-dir` from `tandem-hub pki init`) answer the real CLI.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Iterator

import pytest

from hub_process_fixtures import serve_hub
from tandem.cloud_hub.cli import main

NO_BROKER = ("--no-telemetry", "--no-rollouts", "--http-port", "0", "--grpc-port", "0")


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Run the real `tandem-hub` entry point; (exit code, stderr)."""
    code = main(list(argv))
    return code, capsys.readouterr().err


def make_token(data_dir: Path, scope: str, capsys) -> str:
    assert main(["tokens", "create", "--scope", scope, "--name", scope, "--data-dir", str(data_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["token"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("pki")
    for name in ("fleet", "other"):
        assert main(["pki", "init", "--dir", str(root / name)]) == 0
    yield {"ca": root / "fleet" / "ca.crt", "tls_dir": root / "fleet", "other_ca": root / "other" / "ca.crt"}


@pytest.fixture(scope="module")
def hubs(pki, tmp_path_factory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("hubs")
    with (
        serve_hub(root / "plain", "--mqtt-url", "mqtt://127.0.0.1:1", *NO_BROKER) as plain,
        serve_hub(
            root / "tls", "--tls-dir", str(pki["tls_dir"]), "--mqtt-url", "mqtts://127.0.0.1:1", *NO_BROKER
        ) as tls,
    ):
        yield {"plain": plain["http"].rstrip("/"), "tls": tls["http"].rstrip("/"), "plain_dir": str(root / "plain")}


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "running?" not in lines[0]
    return lines[0]


def test_plain_http_against_a_tls_hub_says_use_https_with_the_ca(hubs, capsys):
    http_url = hubs["tls"].replace("https://", "http://")
    code, err = cli(capsys, "models", "list", "--url", http_url, "--token", "x")
    line = one_line(err)
    assert code == 1
    assert f"{http_url}: the hub speaks HTTPS; use {hubs['tls']} with --ca <tls_dir>/ca.crt" in line, line


def test_https_against_a_plain_hub_says_use_http(hubs, capsys):
    https_url = hubs["plain"].replace("http://", "https://")
    code, err = cli(capsys, "models", "list", "--url", https_url, "--token", "x")
    line = one_line(err)
    assert code == 1 and f"{https_url}: the hub speaks plain HTTP, not TLS; use {hubs['plain']}" in line, line


def test_an_unknown_ca_says_certificate_verify_failed_and_how_to_pass_the_ca(hubs, pki, capsys, monkeypatch):
    monkeypatch.delenv("TANDEM_HUB_CA", raising=False)
    code, err = cli(capsys, "models", "list", "--url", hubs["tls"], "--token", "x")
    line = one_line(err)
    assert code == 1 and "certificate verify failed" in line and hubs["tls"] in line, line
    assert "pass it with --ca <tls_dir>/ca.crt (env TANDEM_HUB_CA)" in line, line
    code, err = cli(capsys, "models", "list", "--url", hubs["tls"], "--token", "x", "--ca", str(pki["other_ca"]))
    line = one_line(err)
    assert code == 1 and f"the CA {pki['other_ca']} did not sign this hub's certificate" in line, line
    # the right CA gets through TLS to the token check: the TLS advice was about TLS only
    code, err = cli(capsys, "models", "list", "--url", hubs["tls"], "--token", "x", "--ca", str(pki["ca"]))
    assert code == 1 and "HTTP 401, the hub refused the token" in one_line(err)


def test_tokens_missing_wrong_or_too_small_are_told_apart(hubs, capsys, monkeypatch):
    monkeypatch.delenv("TANDEM_HUB_TOKEN", raising=False)
    url = hubs["plain"]
    code, err = cli(capsys, "models", "list", "--url", url)
    line = one_line(err)
    assert code == 1 and "HTTP 401, no token given" in line and "--token or set TANDEM_HUB_TOKEN" in line, line
    code, err = cli(capsys, "models", "list", "--url", url, "--token", "tdm_000000000000_" + "a" * 43)
    line = one_line(err)
    assert code == 1 and f"GET {url}/v1/models: HTTP 401, the hub refused the token" in line, line
    reader = make_token(Path(hubs["plain_dir"]), "read", capsys)
    assert cli(capsys, "models", "list", "--url", url, "--token", reader)[0] == 0
    capsys.readouterr()
    code, err = cli(capsys, "tokens", "list", "--url", url, "--token", reader)
    line = one_line(err)
    assert code == 1 and "HTTP 403, the token's scope is too small" in line and "read < operate < admin" in line


def test_nothing_listening_says_connection_refused_and_how_to_start_the_hub(capsys):
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    code, err = cli(capsys, "devices", "list", "--url", url, "--token", "x")
    line = one_line(err)
    assert code == 1 and f"cannot reach the hub at {url}: connection refused" in line, line
    assert "tandem-hub serve" in line
