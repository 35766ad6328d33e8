"""A hub SIGKILLed while a model is being uploaded and registered shows, after restart, either
no version or the whole version (every file stored with its sha256, the manifest signed by the
hub): never half of one. Real hub processes, killed at several points of the upload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from agent_fixtures import make_linear_softmax, make_model_dir
from hub_registry_fixtures import TEST_PUBLISHER, TEST_PUBLISHER_PEM
from tandem.cloud_hub.client import tar_gz_dir
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.storage.artifacts import sha256_file
from tandem.protocols import signing

HUB_SCRIPT = """
import sys
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
hub = Hub(HubConfig.from_keys({"data_dir": sys.argv[1], "http.port": 0, "grpc.port": 0, "mqtt.url": "mqtt://127.0.0.1:1",
                               "telemetry.enabled": False, "rollouts.enabled": False}))
hub.publishers.add(sys.argv[2])
hub.start()
print(hub.http_url, hub.tokens.create("admin", "admin").token, flush=True)
import time
while True:
    time.sleep(60)
"""


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> bytes:
    root = tmp_path_factory.mktemp("crash-model")
    model_dir = make_model_dir(make_linear_softmax(root / "big.onnx", n_in=1500, n_out=1000), root / "m", name="big")
    path = model_dir / "manifest.json"
    path.write_text(json.dumps(signing.sign_manifest(json.loads(path.read_text()), TEST_PUBLISHER)))
    return tar_gz_dir(model_dir)


def _start_hub(data_dir: Path) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HUB_SCRIPT, str(data_dir), TEST_PUBLISHER_PEM],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline().split()
    assert len(line) == 2, "the hub did not start"
    return proc, line[0], line[1]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_s", [0.0, 0.1, 0.4, 1.5, 4.0, None])  # None: after the 201
def test_a_hub_killed_during_registration_has_all_or_nothing_after_restart(archive, tmp_path, kill_after_s):
    data = tmp_path / "hub"
    proc, url, token = _start_hub(data)

    def upload() -> None:
        try:
            httpx.post(
                f"{url}/v1/models",
                content=archive,
                timeout=30,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"},
            )
        except httpx.HTTPError:
            pass  # the hub died under it

    sender = threading.Thread(target=upload)
    sender.start()
    if kill_after_s is None:
        sender.join(60)
    else:
        time.sleep(kill_after_s)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    sender.join(30)
    with Hub(
        HubConfig.from_keys(
            {
                "data_dir": data,
                "http.port": 0,
                "mqtt.url": "mqtt://127.0.0.1:1",
                "telemetry.enabled": False,
                "rollouts.enabled": False,
            }
        )
    ) as hub:
        models = hub.db.query("SELECT name, version FROM models")
        files = hub.db.query("SELECT path, sha256, size FROM model_files")
        variants = hub.db.query("SELECT variant_id FROM variants")
        assert models or kill_after_s is not None, "the control upload did not register"
        if not models:
            assert files == [] and variants == [], (files, variants)
            return
        assert [(m["name"], m["version"]) for m in models] == [("big", "1.0.0")] and files and variants
        for f in files:
            stored = hub.artifacts.path_for(f["sha256"])
            assert sha256_file(stored) == (f["sha256"], f["size"])
        signing.verify_manifest(hub.registry.manifest("big", "1.0.0"), hub.key.private_key.public_key())
