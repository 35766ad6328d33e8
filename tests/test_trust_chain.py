"""The two-signature chain: the hub registers only what a trusted publisher signed, with every
file as signed, and counter-signs it keeping the publisher's signature; the agent serves only
what its trusted keys signed (docs/security.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hub_registry_fixtures import TEST_PUBLISHER, TEST_PUBLISHER_PEM, make_model_dir
from tandem.cloud_hub.client import HubClient, HubClientError
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.protocols import signing

ATTACKER = signing.generate_private_key()


@pytest.fixture
def strict_hub(tmp_path: Path):
    """A hub without trust-on-first-use that trusts TEST_PUBLISHER only."""
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", http_port=0, grpc_port=0, mqtt_url="mqtt://127.0.0.1:1",
                        telemetry=False, rollouts=False)).start()
    hub.publishers.add(TEST_PUBLISHER_PEM, "tests")
    admin = hub.tokens.create("admin", "admin").token
    try:
        yield hub, HubClient(hub.http_url, admin)
    finally:
        hub.stop()


def resign(model_dir: Path, key, **changes) -> Path:
    """Edit the manifest (top-level `changes`) and sign it again with `key` (None: leave it unsigned)."""
    path = model_dir / "manifest.json"
    doc = json.loads(path.read_text())
    doc.pop("signature", None)
    doc.update(changes)
    path.write_text(json.dumps(signing.sign_manifest(doc, key) if key is not None else doc))
    return model_dir


def refusal(client: HubClient, model_dir: Path) -> str:
    with pytest.raises(HubClientError) as info:
        client.register_model_dir(model_dir)
    assert info.value.status == 422, info.value
    return str(info.value)


def test_hub_refuses_unsigned_unknown_and_tampered_uploads_and_registers_nothing(strict_hub, digits_dir, tmp_path):
    hub, client = strict_hub
    unsigned = resign(make_model_dir(digits_dir, tmp_path / "unsigned", version="1.0.1"), None)
    assert "unsigned" in refusal(client, unsigned)
    attacker = resign(make_model_dir(digits_dir, tmp_path / "attacker", version="6.6.6"), ATTACKER)
    assert "untrusted publisher" in refusal(client, attacker)
    # Signed by the trusted publisher, then edited (files untouched, so every sha256 still matches).
    tampered = make_model_dir(digits_dir, tmp_path / "tampered", version="1.0.2")
    doc = json.loads((tampered / "manifest.json").read_text())
    doc["target_profiles"] = ["cpu-x86", "cpu-arm"]
    (tampered / "manifest.json").write_text(json.dumps(doc))
    assert "tampered" in refusal(client, tampered)
    # A flipped signature byte by the trusted key's id.
    flipped = make_model_dir(digits_dir, tmp_path / "flipped", version="1.0.3")
    doc = json.loads((flipped / "manifest.json").read_text())
    value = bytearray(__import__("base64").b64decode(doc["signature"]["value"]))
    value[0] ^= 1
    doc["signature"]["value"] = __import__("base64").b64encode(bytes(value)).decode()
    (flipped / "manifest.json").write_text(json.dumps(doc))
    assert "tampered" in refusal(client, flipped)
    # A file changed after signing: the signature holds, the sha256 does not.
    swapped = make_model_dir(digits_dir, tmp_path / "swapped", version="1.0.4")
    onnx = next((swapped / "variants").rglob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    assert "sha256" in refusal(client, swapped)
    assert client.list_models()["total"] == 0


def test_registered_manifest_keeps_both_signatures(strict_hub, digits_dir, tmp_path):
    hub, client = strict_hub
    model_dir = make_model_dir(digits_dir, tmp_path / "good")
    out = client.register_model_dir(model_dir)
    assert out["created"]
    stored = client.manifest("digits", "1.0.0")
    release = signing.load_public_key(client.release_key()["public_key_pem"])
    assert signing.verify_by_any(stored, [release]) == hub.key.key_id
    publisher = signing.load_public_key(TEST_PUBLISHER_PEM)
    assert signing.verify_by_any(stored, [publisher], field=signing.PUBLISHER_FIELD) == signing.key_id(publisher)
    with pytest.raises(signing.UntrustedKeyError):  # the release key is not the publisher's and vice versa
        signing.verify_by_any(stored, [publisher])
    # Removing the publisher stops further registrations from it at once (no restart).
    hub.publishers.remove(signing.key_id(publisher))
    assert "untrusted publisher" in refusal(client, make_model_dir(digits_dir, tmp_path / "later", version="1.1.0"))


def test_trust_on_first_use_is_explicit_and_loud(tmp_path, digits_dir, caplog):
    config = HubConfig(data_dir=tmp_path / "hub", http_port=0, mqtt_url="mqtt://127.0.0.1:1", telemetry=False,
                       rollouts=False, publisher_trust_on_first_use=True)
    with caplog.at_level(logging.WARNING), Hub(config) as hub:
        hub.registry.register_dir(resign(make_model_dir(digits_dir, tmp_path / "m"), ATTACKER))
        assert [p.key_id for p in hub.publishers.list()] == [signing.key_id(ATTACKER.public_key())]
        with pytest.raises(Exception, match="unsigned"):  # first use trusts a key, never unsigned content
            hub.registry.register_dir(resign(make_model_dir(digits_dir, tmp_path / "u", version="2.0.0"), None))
    assert any("TRUST ON FIRST USE" in r.message for r in caplog.records)


def test_publishers_cli_adds_lists_and_removes(tmp_path, capsys):
    from tandem.cloud_hub.cli import main

    pem = tmp_path / "p.pub.pem"
    pem.write_text(TEST_PUBLISHER_PEM)
    data = ["--data-dir", str(tmp_path / "d")]
    kid = signing.key_id(TEST_PUBLISHER.public_key())
    assert main(["publishers", "add", str(pem), "--name", "ml-team", *data]) == 0
    assert main(["publishers", "list", *data]) == 0
    out = capsys.readouterr().out
    assert kid in out and "ml-team" in out
    folder = tmp_path / "d" / "keys" / "publishers"
    assert folder.stat().st_mode & 0o777 == 0o700 and (folder / f"{kid}.pem").stat().st_mode & 0o777 == 0o600
    assert main(["publishers", "remove", kid, *data]) == 0
    assert main(["publishers", "remove", kid, *data]) == 1
    assert "is not trusted" in capsys.readouterr().err
    (tmp_path / "junk.pem").write_text("not a key")
    assert main(["publishers", "add", str(tmp_path / "junk.pem"), *data]) == 1
