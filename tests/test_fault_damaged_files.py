"""Damaged SQLite files in the agent's data dir at start (garbage, truncated, a zeroed header).

The agent refuses to start with one line that names the file and the way out, never a traceback,
and never deletes the file. Following that way out (move the outbox aside) must not cost the
windows sent afterwards: a new outbox numbering from 1 again would have the hub drop them as
duplicates of the old numbers. Real parts: SQLite files damaged on disk, `tandem-agent run` in a
process, Mosquitto and the hub's telemetry ingest on SQLite.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent_fixtures import make_linear_softmax, make_model_dir
from tandem.cloud_hub.telemetry import TelemetryIngestService, TelemetryServiceConfig
from tandem.edge_agent.errors import DataFileError
from tandem.edge_agent.hard_examples import HardExampleQueue
from tandem.edge_agent.telemetry import ModelInfo, TelemetryService
from tandem.edge_agent.telemetry.outbox import Outbox, OutboxDamagedError
from tandem.protocols.telemetry_codec import TelemetryWindow
from waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {
    "inputs": {"x": {"mean": {"edges": [-0.5, 0.0, 0.5], "counts": [25, 25, 25, 25]}}},
    "confidence": {"counts": [0] * 15 + [10, 10, 10, 10, 10]},
    "classes": {"counts": [10, 10, 10]},
}
MODEL = ModelInfo("toy", "1.0.0", REFERENCE, "toy-fp32")


def _damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(8192))
    elif how == "truncated":
        os.truncate(path, size // 3)
    else:  # a zeroed first page: the header and the schema's root
        with open(path, "r+b") as f:
            f.write(b"\0" * 4096)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _full_outbox(path: Path) -> None:
    box = Outbox(path)
    for i in range(200):
        box.append(TelemetryWindow(device_id="d", model_name="m", model_version="1", samples=i))
    box._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    box.close()


def _full_queue(path: Path) -> None:
    queue = HardExampleQueue(path)
    for i in range(50):
        queue.put({"x": np.ones((1, 64), np.float32)}, request_id=f"r{i}", model="m", version="1", label=1,
                  confidence=0.1, source="edge")  # fmt: skip
    queue.flush(5)
    queue._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    queue.close()


@pytest.mark.parametrize("how", ["garbage", "truncated", "zeroed_header"])
def test_a_damaged_outbox_or_queue_is_refused_by_name_and_kept(tmp_path, how):
    for name, fill, open_ in (
        ("telemetry_outbox.sqlite", _full_outbox, Outbox),
        ("hard_examples.sqlite", _full_queue, HardExampleQueue),
    ):
        path = tmp_path / name
        fill(path)
        _damage(path, how)
        before = _sha(path)
        with pytest.raises(DataFileError, match="cannot be opened") as err:
            open_(path)
        message = str(err.value)
        assert str(path) in message and "move it aside" in message and "\n" not in message
        assert _sha(path) == before, f"{name}: the damaged file was changed"
    with pytest.raises(OutboxDamagedError):
        Outbox(tmp_path / "telemetry_outbox.sqlite")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    return make_model_dir(make_linear_softmax(root / "lin.onnx"), root / "toy", name="toy")


@pytest.mark.parametrize("name", ["hard_examples.sqlite", "telemetry_outbox.sqlite"])
def test_the_agent_refuses_to_start_on_a_damaged_file_with_one_line(model_dir, tmp_path, name):
    state = tmp_path / "state"
    state.mkdir()
    (state / name).write_bytes(np.random.default_rng(1).bytes(8192))
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[model]\ndir = "{model_dir}"\n[server]\nendpoint = "ipc://{tmp_path}/a.sock"\ndevice_id = "dmg"\n'
        '[hard_examples]\ndata_dir = "state"\n[trust]\nallow_unsigned = true\n'
        '[telemetry]\nmqtt_url = "mqtt://127.0.0.1:1"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "tandem.edge_agent.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("tandem-agent:")]
    assert name in line and "cannot be opened" in line and "move it aside" in line, line
    assert (state / name).exists()


def _send(service: TelemetryService, n: int) -> None:
    for _ in range(n):
        service.record("edge", 2.0, confidence=0.9, label=1, inputs=np.zeros((1, 8), np.float32))
        service.flush()


def test_windows_after_a_reset_outbox_are_stored_not_taken_for_duplicates(tmp_path, mosquitto):  # noqa: F811
    hub = TelemetryIngestService(
        tmp_path / "hub", mosquitto.url, lambda name, version: None, TelemetryServiceConfig(eval_interval_s=3600)
    )
    hub.start()
    data = tmp_path / "agent"
    try:
        assert hub.ingest.wait_subscribed(10)
        first = TelemetryService(mosquitto.url, "reset", MODEL, data, window_s=3600).start()
        try:
            _send(first, 5)
            assert wait_for(lambda: hub.store.device_sequences("reset") == [1, 2, 3, 4, 5], 20)
        finally:
            first.stop()
        outbox = data / "telemetry_outbox.sqlite"
        for suffix in ("", "-wal", "-shm"):  # what the operator does with a damaged outbox: move it aside
            if Path(f"{outbox}{suffix}").exists():
                os.rename(f"{outbox}{suffix}", f"{outbox}{suffix}.damaged")
        second = TelemetryService(mosquitto.url, "reset", MODEL, data, window_s=3600).start()
        try:
            _send(second, 3)
            assert wait_for(lambda: hub.store.count_windows("reset") == 8, 20), (
                f"windows after the reset were dropped: the hub holds {hub.store.device_sequences('reset')}"
            )
            sequences = hub.store.device_sequences("reset")
            assert sequences[:5] == [1, 2, 3, 4, 5] and sequences[5] > 5
            assert sequences[5:] == list(range(sequences[5], sequences[5] + 3))
        finally:
            second.stop()
    finally:
        hub.stop()
