"""`tandem-hub`: bootstrap a token locally, then drive a real hub over REST; `serve` prints its URLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from tandem.cloud_hub.cli import main
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from ota_fixtures import MOSQUITTO
from tandem.protocols.signing import load_public_key, verify_manifest


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.sqlite_only  # `tokens create --data-dir` writes the data dir's hub.db; a PostgreSQL hub reads its URL
def test_bootstrap_token_then_manage_models_devices_and_tokens(tmp_path, capsys, hub_model_dir, monkeypatch):
    monkeypatch.delenv("TANDEM_HUB_URL", raising=False)
    monkeypatch.delenv("TANDEM_HUB_TOKEN", raising=False)
    data = tmp_path / "data"
    code, out, _ = run(
        capsys, "tokens", "create", "--scope", "admin", "--name", "me", "--data-dir", str(data), "--json"
    )
    assert code == 0
    admin = json.loads(out)["token"]
    with Hub(
        HubConfig.from_keys(
            {"publishers.trust_on_first_use": True, "data_dir": data, "http.port": 0, "mqtt.url": "mqtt://127.0.0.1:1"}
        )
    ).start() as hub:
        remote = ["--url", hub.http_url, "--token", admin]
        code, out, _ = run(capsys, "models", "register", str(hub_model_dir), *remote)
        assert code == 0 and out.startswith("registered: digits 1.0.0")
        code, out, _ = run(capsys, "models", "register", str(hub_model_dir), *remote)
        assert code == 0 and "already registered" in out
        code, out, _ = run(capsys, "models", "list", *remote)
        assert out.splitlines()[0].split() == ["NAME", "LATEST", "VERSIONS", "UPDATED"]
        assert out.splitlines()[1].split()[:3] == ["digits", "1.0.0", "1"]
        code, out, _ = run(capsys, "models", "list", "--name", "digits", "--json", *remote)
        assert [v["version"] for v in json.loads(out)["items"]] == ["1.0.0"]
        code, out, _ = run(capsys, "models", "show", "digits", "1.0.0", *remote)
        assert f"signed by key {hub.key.key_id}" in out
        assert out.splitlines()[2].split()[:4] == ["cpu-x86", "ort-fp32", "onnxruntime", "fp32"]
        pem = tmp_path / "trust" / "release.pub.pem"
        code, _, _ = run(capsys, "keys", "release", "--out", str(pem), *remote)
        assert code == 0
        code, out, _ = run(capsys, "models", "show", "digits", "1.0.0", "--json", *remote)
        verify_manifest(json.loads(out), load_public_key(pem))

        hub.devices.register("cam-1", "cpu-x86", "0.1.0", {"site": "lyon"}, "digits", "1.0.0")
        code, out, _ = run(capsys, "devices", "list", "--tag", "site=lyon", *remote)
        row = out.splitlines()[1].split()
        assert row[:5] == ["cam-1", "online", "cpu-x86", "digits", "1.0.0"]
        code, out, _ = run(capsys, "devices", "list", "--status", "offline", "--json", *remote)
        assert json.loads(out)["total"] == 0

        monkeypatch.setenv("TANDEM_HUB_URL", hub.http_url)
        monkeypatch.setenv("TANDEM_HUB_TOKEN", admin)
        code, out, _ = run(capsys, "tokens", "create", "--scope", "read", "--name", "grafana", "--json")
        reader = json.loads(out)
        assert (
            httpx.get(f"{hub.http_url}/v1/models", headers={"Authorization": f"Bearer {reader['token']}"}).status_code
            == 200
        )
        code, out, _ = run(capsys, "tokens", "revoke", reader["token_id"])
        assert code == 0 and "revoked" in out
        code, out, _ = run(capsys, "tokens", "list")
        assert any(line.split()[:4] == [reader["token_id"], "grafana", "read", "revoked"] for line in out.splitlines())

        code, _, err = run(capsys, "models", "list", "--token", reader["token"])
        assert code == 1 and "401" in err and "revoked" in err
        code, _, err = run(capsys, "models", "register", str(tmp_path), "--token", admin)
        assert code == 1 and "no manifest.json" in err


def test_unreachable_hub_is_a_clear_error(capsys):
    code, _, err = run(capsys, "models", "list", "--url", "http://127.0.0.1:1", "--token", "x")
    assert code == 1 and "cannot reach the hub" in err


def test_serve_prints_its_urls_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tandem.cloud_hub.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--http-port",
            "0",
            "--broker",
            "auto",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        urls: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while "mqtt" not in urls and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("http", "docs", "telemetry", "drift", "rollouts", "mqtt", "grpc"):
                urls[parts[0]] = parts[1]
        assert {"http", "docs", "mqtt"} <= set(urls), proc.stderr.read() if proc.poll() is not None else urls
        assert httpx.get(urls["http"] + "/healthz", timeout=5).json()["status"] == "ok"
        assert httpx.get(urls["docs"], timeout=5).status_code == 200
        if MOSQUITTO:  # auto picked Mosquitto (MQTT 5): telemetry, drift and rollouts run and print their routes
            assert urls["rollouts"] == urls["http"] + "/v1/rollouts" and "telemetry" in urls and "drift" in urls
            assert httpx.get(urls["rollouts"], timeout=5).status_code == 401  # there, behind a token
        assert "tokens create" in proc.stdout.readline()  # the hint when no token exists yet
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
