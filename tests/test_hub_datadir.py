"""One writer per data dir, and leftovers of killed uploads swept at start (real Hub objects and processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.storage.datadir import DataDirLockedError
from telemetry_fixtures import python_env


def _config(data_dir) -> HubConfig:
    return HubConfig.from_keys({"data_dir": data_dir, "http.port": 0, "grpc.port": 0, "mqtt.url": "mqtt://127.0.0.1:1"})


def test_a_second_hub_on_the_same_data_dir_is_refused_by_name(tmp_path):
    first = Hub(_config(tmp_path / "hub"))
    try:
        with pytest.raises(DataDirLockedError, match=rf"another hub \(pid {os.getpid()}\) is using this data dir"):
            Hub(_config(tmp_path / "hub"))
        Hub(_config(tmp_path / "other")).stop()  # another dir is fine
    finally:
        first.stop()
    Hub(_config(tmp_path / "hub")).stop()  # released on stop


def test_a_killed_hub_does_not_block_its_restart(tmp_path):
    code = (
        "import sys, time; from tandem.cloud_hub.config import HubConfig; from tandem.cloud_hub.hub import Hub; "
        f"Hub(HubConfig.from_keys({{'data_dir': {str(tmp_path / 'hub')!r}, 'mqtt.url': 'mqtt://127.0.0.1:1'}})); "
        "print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=python_env(), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        with pytest.raises(DataDirLockedError, match=f"pid {proc.pid}"):
            Hub(_config(tmp_path / "hub"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    Hub(_config(tmp_path / "hub")).stop()  # the kernel dropped the lock with the process


def test_leftovers_of_killed_uploads_are_swept_at_start(tmp_path):
    root = tmp_path / "hub"
    (root / "upload-abc123" / "model").mkdir(parents=True)
    (root / "upload-abc123" / "model" / "model.onnx").write_bytes(b"x" * 4096)
    (root / "artifacts" / "tmp").mkdir(parents=True)
    (root / "artifacts" / "tmp" / "partial-blob").write_bytes(b"y" * 1024)
    (root / "uploads-keep").mkdir()  # not an upload-* temp folder
    Hub(_config(root)).stop()
    assert not (root / "upload-abc123").exists()
    assert list((root / "artifacts" / "tmp").iterdir()) == []
    assert (root / "uploads-keep").is_dir()
