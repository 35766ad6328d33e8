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


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    """A folder holding edge.onnx shaped as hub_registry_fixtures.make_model_dir describes it (input [N, 64],
    probabilities [N, 10]): a small real softmax model, so these tests need not train the digits models."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = tmp_path_factory.mktemp("trust-model")
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "edge.onnx"))
    return out


@pytest.fixture
def strict_hub(tmp_path: Path):
    """A hub without trust-on-first-use that trusts TEST_PUBLISHER only."""
    hub = Hub(
        HubConfig.from_keys(
            {
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.url": "mqtt://127.0.0.1:1",
                "telemetry.enabled": False,
                "rollouts.enabled": False,
            }
        )
    ).start()
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
    config = HubConfig.from_keys(
        {
            "data_dir": tmp_path / "hub",
            "http.port": 0,
            "mqtt.url": "mqtt://127.0.0.1:1",
            "telemetry.enabled": False,
            "rollouts.enabled": False,
            "publishers.trust_on_first_use": True,
        }
    )
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


def agent_check(model_dir: Path, tmp_path: Path, trust: str = "", ota_key: Path | None = None):
    """`tandem-agent check` on `model_dir` with a [trust] section (and optionally ota.trusted_key)."""
    import subprocess
    import sys

    config = tmp_path / "agent.toml"
    ota = f'[ota]\ntrusted_key = "{ota_key}"\n' if ota_key else ""
    config.write_text(
        f'[model]\ndir = "{model_dir}"\n[hard_examples]\ndata_dir = "{tmp_path / "state"}"\n{ota}[trust]\n{trust}\n'
    )
    return subprocess.run(
        [sys.executable, "-m", "tandem.edge_agent.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # five tandem-agent check processes: 10.8 s at load 8
def test_attacker_release_is_refused_by_the_hub_and_again_by_the_agent_it_was_copied_to(
    strict_hub, digits_dir, tmp_path
):
    hub, client = strict_hub
    attacker = resign(make_model_dir(digits_dir, tmp_path / "evil", version="6.6.6"), ATTACKER)
    assert "untrusted publisher" in refusal(client, attacker)
    release_pem = tmp_path / "release.pem"
    release_pem.write_text(client.release_key()["public_key_pem"])
    publisher_pem = tmp_path / "publisher.pem"
    publisher_pem.write_text(TEST_PUBLISHER_PEM)
    # Placed by hand on a device that trusts the hub's release key (as ota.trusted_key) and the publisher.
    done = agent_check(attacker, tmp_path, f'keys = ["{publisher_pem}"]', ota_key=release_pem)
    assert done.returncode == 1 and "UNTRUSTED" in done.stderr and "not trusted" in done.stderr, done.stderr
    done = agent_check(resign(attacker, None), tmp_path, ota_key=release_pem)
    assert done.returncode == 1 and "UNSIGNED" in done.stderr, done.stderr
    # Only the explicit development switch serves it, and says so.
    done = agent_check(attacker, tmp_path, "allow_unsigned = true")
    assert done.returncode == 0 and "UNSIGNED" in done.stdout and "allowed by trust.allow_unsigned" in done.stdout
    # The genuine folder, published by the trusted key, passes; so does the same file edited by the attacker: no.
    good = make_model_dir(digits_dir, tmp_path / "good")
    done = agent_check(good, tmp_path, f'keys = ["{publisher_pem}"]')
    assert done.returncode == 0 and "signed by trusted key" in done.stdout, done.stderr
    doc = json.loads((good / "manifest.json").read_text())
    doc["profiles"]["cpu-x86"]["reason"] = "edited"
    (good / "manifest.json").write_text(json.dumps(doc))
    done = agent_check(good, tmp_path, f'keys = ["{publisher_pem}"]')
    assert done.returncode == 1 and "TAMPERED" in done.stderr, done.stderr


def test_a_device_can_require_both_signatures(strict_hub, digits_dir, tmp_path):
    from tandem.edge_agent.trust import TrustPolicy, trust_verdict

    hub, client = strict_hub
    client.register_model_dir(make_model_dir(digits_dir, tmp_path / "m"))
    stored = client.manifest("digits", "1.0.0")
    release = signing.load_public_key(client.release_key()["public_key_pem"])
    publisher = signing.load_public_key(TEST_PUBLISHER_PEM)
    both = TrustPolicy(keys=(release,), publisher_keys=(publisher,), require_publisher=True)
    assert trust_verdict(stored, both).trusted
    assert trust_verdict(stored, TrustPolicy(keys=(release,))).trusted
    # A release counter-signed by the hub over an unknown publisher's signature is refused by such a device.
    other = TrustPolicy(keys=(release,), publisher_keys=(ATTACKER.public_key(),), require_publisher=True)
    assert trust_verdict(stored, other).status == "untrusted"
    # So is a manifest with only the hub's signature.
    lone = signing.sign_manifest(
        {k: v for k, v in stored.items() if k not in ("signature", signing.PUBLISHER_FIELD)}, hub.key.private_key
    )
    assert trust_verdict(lone, both).status == "untrusted"
    # And a publisher signature swapped in under the hub's signature breaks the hub's signature.
    swapped = dict(stored, publisher_signature=resign_doc(stored, ATTACKER))
    assert trust_verdict(swapped, both).status == "tampered"


def resign_doc(doc: dict, key) -> dict:
    body = {k: v for k, v in doc.items() if k not in ("signature", signing.PUBLISHER_FIELD)}
    return signing.sign_manifest(body, key)["signature"]
