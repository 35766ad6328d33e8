"""Registering compiled models: validation, immutability, upload, and signatures agents can check."""

from __future__ import annotations

import io
import os
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from hub_registry_fixtures import TEST_PUBLISHER, make_model_dir
from tandem.protocols import signing
from tandem.protocols.manifest import Manifest


def client(hub, scope: str = "operate") -> httpx.Client:
    token = hub.tokens.create(f"test-{scope}", scope).token
    return httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def tar_gz(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return buf.getvalue()


def test_registered_manifest_is_signed_by_the_key_the_hub_publishes(running_hub, hub_model_dir):
    result = running_hub.registry.register_dir(hub_model_dir)
    assert result.created
    with client(running_hub, "read") as c:
        key = c.get("/v1/keys/release").json()
        served = c.get("/v1/models/digits/versions/1.0.0/manifest").json()
    public = signing.load_public_key(key["public_key_pem"])
    signing.verify_manifest(served, public)  # raises if not signed by the published key
    assert served["signature"]["key_id"] == key["key_id"]
    original = json.loads((hub_model_dir / "manifest.json").read_text())
    # Counter-signed: the publisher's signature kept inside, covered by the hub's.
    expected = {k: v for k, v in original.items() if k != "signature"} | {"publisher_signature": original["signature"]}
    assert {k: v for k, v in served.items() if k != "signature"} == expected
    # Any change breaks it: an agent would refuse a tampered manifest.
    served["version"] = "1.0.1"
    with pytest.raises(signing.SignatureError):
        signing.verify_manifest(served, public)


def test_release_key_is_private_to_its_owner(running_hub):
    mode = running_hub.config.release_key_path.stat().st_mode & 0o777
    assert mode == 0o600
    assert running_hub.config.keys_dir.stat().st_mode & 0o777 == 0o700


def test_files_are_stored_content_addressed_and_downloadable(running_hub, hub_model_dir):
    running_hub.registry.register_dir(hub_model_dir)
    manifest = Manifest.from_json((hub_model_dir / "manifest.json").read_text())
    entry = manifest.variants[0].files[0]
    blob = running_hub.config.artifacts_dir / "sha256" / entry.sha256[:2] / entry.sha256
    assert blob.read_bytes() == (hub_model_dir / entry.path).read_bytes()
    with client(running_hub, "read") as c:
        got = c.get(f"/v1/artifacts/{entry.sha256}")
    assert got.status_code == 200 and got.content == blob.read_bytes()


def test_same_version_same_content_is_idempotent_and_different_content_is_refused(running_hub, hub_model_dir, tmp_path):
    assert running_hub.registry.register_dir(hub_model_dir).created
    assert not running_hub.registry.register_dir(hub_model_dir).created
    changed = json.loads((hub_model_dir / "manifest.json").read_text())
    changed["task"]["classes"] = 11
    changed.pop("signature")  # the publisher signs the changed content: the version, not the signature, is at stake
    (hub_model_dir / "manifest.json").write_text(json.dumps(signing.sign_manifest(changed, TEST_PUBLISHER)))
    with client(running_hub) as c:
        r = c.post("/v1/models", content=tar_gz(hub_model_dir), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 409
    assert "immutable" in r.json()["detail"] and "1.0.0" in r.json()["detail"]
    # The stored manifest is unchanged.
    assert running_hub.registry.manifest("digits", "1.0.0")["task"]["classes"] == 10


def test_a_file_that_does_not_match_its_manifest_is_rejected(running_hub, hub_model_dir):
    model = hub_model_dir / "variants" / "ort-fp32" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    with client(running_hub) as c:
        r = c.post("/v1/models", content=tar_gz(hub_model_dir), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "sha256" in detail and "variants/ort-fp32/model.onnx" in detail
    assert str(running_hub.config.data_dir) not in detail  # names the file as the uploader knows it
    assert running_hub.registry.list_models()[1] == 0


def test_upload_over_rest_then_list_models_versions_and_variants(running_hub, digits_dir, tmp_path):
    with client(running_hub) as c:
        for version in ("1.0.0", "1.2.0", "1.10.0"):
            d = make_model_dir(digits_dir, tmp_path / version, version=version)
            r = c.post("/v1/models", content=tar_gz(d), headers={"Content-Type": "application/gzip"})
            assert r.status_code == 201, r.text
            assert r.json() == {
                "name": "digits",
                "version": version,
                "created": True,
                "content_sha256": r.json()["content_sha256"],
            }
        models = c.get("/v1/models").json()
        assert models["total"] == 1
        assert models["items"][0]["latest_version"] == "1.10.0"  # semantic, not string order
        versions = c.get("/v1/models/digits/versions", params={"limit": 2}).json()
        assert [v["version"] for v in versions["items"]] == ["1.10.0", "1.2.0"] and versions["total"] == 3
        detail = c.get("/v1/models/digits/versions/1.2.0").json()
        assert detail["files"][0]["path"] == "variants/ort-fp32/model.onnx"
        variants = c.get("/v1/variants", params={"profile": "cpu-x86", "model": "digits"}).json()
        assert variants["total"] == 3 and all(v["runtime"] == "onnxruntime" for v in variants["items"])
        assert c.get("/v1/variants", params={"profile": "npu-intel"}).json()["total"] == 0
        assert c.get("/v1/models/digits/versions/9.9.9").status_code == 404
        assert c.get("/v1/models/nope/versions").status_code == 404


def test_archives_that_escape_or_are_garbage_are_refused(running_hub, hub_model_dir):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with client(running_hub) as c:
        r = c.post("/v1/models", content=buf.getvalue(), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 422
        r = c.post("/v1/models", content=b"not a tar at all", headers={"Content-Type": "application/gzip"})
        assert r.status_code == 422
    assert not (running_hub.config.data_dir.parent / "escape.txt").exists()
    assert not (running_hub.config.data_dir / "escape.txt").exists()


def test_read_scope_cannot_register(running_hub, hub_model_dir):
    with client(running_hub, "read") as c:
        r = c.post("/v1/models", content=tar_gz(hub_model_dir), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 403


@pytest.mark.slow
def test_a_real_compiler_output_registers_and_every_file_downloads(running_hub, digits_dir, tmp_path):
    from hub_fixtures import compile_digits

    out = compile_digits(
        digits_dir,
        "edge",
        tmp_path / "compiled",
        name="digits-edge",
        key=tmp_path / "compiler.pem",
        profiles=("cpu-x86", "cpu-arm"),
    )
    compiled = Manifest.from_json((out / "manifest.json").read_text())
    with client(running_hub) as c:
        r = c.post("/v1/models", content=tar_gz(out), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 201, r.text
        served = c.get(f"/v1/models/digits-edge/versions/{compiled.version}/manifest").json()
        public = signing.load_public_key(c.get("/v1/keys/release").json()["public_key_pem"])
        signing.verify_manifest(served, public)  # re-signed by the hub, whoever signed it before
        assert served["signature"]["key_id"] != (compiled.signature or {}).get("key_id")
        entries = [f for v in compiled.variants for f in v.files] + ([compiled.golden.file] if compiled.golden else [])
        assert len(entries) >= 2
        for entry in entries:
            blob = c.get(f"/v1/artifacts/{entry.sha256}")
            assert blob.status_code == 200 and blob.content == (out / entry.path).read_bytes()
        variants = c.get("/v1/variants", params={"model": "digits-edge", "profile": "cpu-arm"}).json()["items"]
        assert compiled.profiles["cpu-arm"].chosen in {v["variant_id"] for v in variants}


def test_racing_registrations_of_one_version_store_exactly_one(running_hub, digits_dir, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tandem.cloud_hub.errors import ConflictError

    dirs = []
    for i, onnx in enumerate(["edge.onnx", "cloud.onnx"] * 3):
        dirs.append(make_model_dir(digits_dir, tmp_path / f"d{i}", version="2.0.0", onnx_name=onnx))

    def register(d):
        try:
            return running_hub.registry.register_dir(d)
        except ConflictError as exc:
            return exc

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(register, dirs))
    created = [r for r in results if not isinstance(r, Exception) and r.created]
    conflicts = [r for r in results if isinstance(r, ConflictError)]
    assert len(created) == 1 and len(conflicts) == 3
    winner = created[0].content_sha256
    assert all(r.content_sha256 == winner for r in results if not isinstance(r, Exception))
    assert running_hub.registry.list_versions("digits")[1] == 1


def test_a_release_key_others_can_read_is_tightened(hub_config):
    from tandem.cloud_hub.hub import Hub

    Hub(hub_config).stop()
    hub_config.release_key_path.chmod(0o644)
    hub = Hub(hub_config)
    try:
        assert hub_config.release_key_path.stat().st_mode & 0o777 == 0o600
    finally:
        hub.stop()


def test_oversized_uploads_and_gzip_bombs_get_413(tmp_path):
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    config = HubConfig.from_keys(
        {"data_dir": tmp_path / "d", "http.port": 0, "mqtt.url": "mqtt://127.0.0.1:1", "http.max_upload_mb": 0.05}
    )
    with Hub(config).start() as hub, client(hub) as c:
        bomb_dir = tmp_path / "bomb"
        bomb_dir.mkdir()
        (bomb_dir / "zeros.bin").write_bytes(bytes(2 * 1024 * 1024))  # gzips to a few KB
        bomb = tar_gz(bomb_dir)
        assert len(bomb) < 50 * 1024
        r = c.post("/v1/models", content=bomb, headers={"Content-Type": "application/gzip"})
        assert r.status_code == 413 and "unpacks to" in r.json()["detail"]
        r = c.post("/v1/models", content=os.urandom(100 * 1024), headers={"Content-Type": "application/gzip"})
        assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]
        assert not list(hub.config.data_dir.glob("upload-*"))  # temp files cleaned up
