"""A device's token downloads only what was rolled out to its own device: on a real hub (REST on
loopback, SQLite), a rollout of digits 1.0.0 to dev-b lets dev-b's token fetch the manifest and its
files and refuses dev-a's (403), while a read token is unaffected."""

from __future__ import annotations

from pathlib import Path

import httpx
from agent_fixtures import make_linear_softmax
from hub_registry_fixtures import make_model_dir


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_device_token_downloads_only_versions_rolled_out_to_its_device(running_hub, tmp_path: Path):
    hub = running_hub
    make_linear_softmax(tmp_path / "onnx" / "edge.onnx", n_in=64, n_out=10)  # the digits model's shapes, untrained
    hub.registry.register_dir(make_model_dir(tmp_path / "onnx", tmp_path / "digits-1.0.0"))
    manifest_path = "/v1/models/digits/versions/1.0.0/manifest"
    ops, reader = hub.tokens.create("ops", "operate").token, hub.tokens.create("console", "read").token
    token = {d: hub.tokens.create(d, "device", d).token for d in ("dev-a", "dev-b")}
    with httpx.Client(base_url=hub.http_url, timeout=30) as rest:
        sha = rest.get(manifest_path, headers=_auth(reader)).json()["variants"][0]["files"][0]["sha256"]
        artifact = f"/v1/artifacts/{sha}"
        # before any rollout, neither device may fetch the version
        for device in ("dev-a", "dev-b"):
            assert rest.get(manifest_path, headers=_auth(token[device])).status_code == 403
            assert rest.head(artifact, headers=_auth(token[device])).status_code == 403
        for device in ("dev-a", "dev-b"):
            body = {"device_id": device, "profile": "cpu-x86", "agent_version": "1", "tags": {}}
            assert rest.post("/v1/devices", json=body, headers=_auth(ops)).status_code in (200, 201)
        body = {"model": "digits", "version": "1.0.0", "device_ids": ["dev-b"], "waves": [100]}
        created = rest.post("/v1/rollouts", json=body, headers=_auth(ops))
        assert created.status_code == 201, created.text

        assert rest.get(manifest_path, headers=_auth(token["dev-b"])).status_code == 200
        assert rest.get(artifact, headers=_auth(token["dev-b"])).status_code == 200
        denied = rest.get(manifest_path, headers=_auth(token["dev-a"]))
        assert denied.status_code == 403 and "dev-a" in denied.json()["detail"]
        assert rest.get(artifact, headers=_auth(token["dev-a"])).status_code == 403
        assert rest.get(artifact, headers=_auth(reader)).status_code == 200  # read tokens are not per device


def test_tokens_create_device_makes_a_device_token_and_refuses_mixed_flags(tmp_path: Path, capsys):
    import json

    from tandem.cloud_hub.cli import main

    data = tmp_path / "hub-data"
    assert (
        main(["tokens", "create", "--device", "cam-017", "--name", "cam-017", "--data-dir", str(data), "--json"]) == 0
    )
    made = json.loads(capsys.readouterr().out)
    assert made["scope"] == "device" and made["device_id"] == "cam-017" and made["token"].startswith("tdm_")
    assert (
        main(["tokens", "create", "--scope", "admin", "--device", "cam-017", "--name", "x", "--data-dir", str(data)])
        == 1
    )
    assert "--device" in capsys.readouterr().err
    assert main(["tokens", "create", "--scope", "device", "--name", "x", "--data-dir", str(data)]) == 1
    assert "device_id" in capsys.readouterr().err  # a device token must name its device
    assert main(["tokens", "create", "--device", "a/b", "--name", "x", "--data-dir", str(data)]) == 1
