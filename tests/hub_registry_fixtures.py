"""A compiled-model directory for hub tests, made by hand from the digits edge model
(one onnxruntime fp32 variant) until the compiler pipeline writes them, plus hub fixtures."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tandem.protocols.manifest import FileEntry, Manifest, ProfileChoice, TensorSpec, Variant
from tandem.protocols.signing import generate_private_key, public_key_pem, sign_manifest

# The publisher that signs these hand-made folders, as tandem-compile signs its output.
TEST_PUBLISHER = generate_private_key()
TEST_PUBLISHER_PEM = public_key_pem(TEST_PUBLISHER).decode("ascii")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_model_dir(
    digits_dir: Path, out: Path, name: str = "digits", version: str = "1.0.0", onnx_name: str = "edge.onnx"
) -> Path:
    """Copy a digits ONNX model into `out` and write a valid manifest.json for it."""
    out.mkdir(parents=True, exist_ok=True)
    model = out / "variants" / "ort-fp32" / "model.onnx"
    model.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(digits_dir / onnx_name, model)
    inputs = [TensorSpec("input", "float32", [-1, 64])]
    outputs = [TensorSpec("probabilities", "float32", [-1, 10])]
    manifest = Manifest(
        name=name,
        version=version,
        created_at="2026-11-22T19:00:00Z",
        expires_at=None,
        task={"kind": "classification", "classes": 10},
        inputs=inputs,
        outputs=outputs,
        variants=[
            Variant(
                id="ort-fp32",
                runtime="onnxruntime",
                precision="fp32",
                files=[FileEntry(str(model.relative_to(out)), sha256_of(model), model.stat().st_size)],
                inputs=inputs,
                outputs=outputs,
                profiles=["cpu-x86"],
            )
        ],
        profiles={
            "cpu-x86": ProfileChoice(
                chosen="ort-fp32", reason="only variant; fp32 fits cpu-x86", candidates=["ort-fp32"]
            )
        },
        target_profiles=["cpu-x86"],
    )
    (out / "manifest.json").write_text(Manifest.from_dict(sign_manifest(manifest.to_dict(), TEST_PUBLISHER)).to_json())
    return out


@pytest.fixture
def hub_model_dir(digits_dir: Path, tmp_path: Path) -> Path:
    return make_model_dir(digits_dir, tmp_path / "compiled" / "digits-1.0.0")


@pytest.fixture
def hub_config(tmp_path: Path):
    from tandem.cloud_hub.config import HubConfig

    # An external (never contacted) MQTT URL keeps REST tests free of a broker.
    return HubConfig.from_keys(
        {
            "publishers.trust_on_first_use": True,
            "data_dir": tmp_path / "hub-data",
            "http.port": 0,
            "grpc.port": 0,
            "mqtt.url": "mqtt://127.0.0.1:1",
        }
    )


@pytest.fixture
def running_hub(hub_config) -> Iterator[object]:
    """A Hub with its HTTP server on a free loopback port, stopped after the test."""
    from tandem.cloud_hub.hub import Hub

    hub = Hub(hub_config).start()
    try:
        yield hub
    finally:
        hub.stop()
