"""`tandem-hub serve --cluster --replica-id`: a real replica process on a real Mosquitto names itself and
takes the lease; the flags' mistakes are refused by name before anything starts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hub_process_fixtures import serve_hub
from tandem.cloud_hub.auth import TokenStore
from tandem.cloud_hub.storage import open_database


def serve(data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cloud_hub.cli", "serve", "--data-dir", str(data_dir), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_replica_flags_are_checked_by_name(tmp_path: Path) -> None:
    alone = serve(tmp_path / "hub", "--replica-id", "hub-a", "--mqtt-url", "mqtt://127.0.0.1:1")
    assert alone.returncode != 0 and "cluster.replica_id" in alone.stderr and "--cluster" in alone.stderr
    no_broker = serve(tmp_path / "hub", "--cluster")
    assert no_broker.returncode != 0 and "mqtt.url" in no_broker.stderr and "cluster.enabled" in no_broker.stderr


@pytest.mark.slow  # ~20 s here: a hub process starts
def test_serve_as_a_replica_names_itself_and_takes_the_lease(tmp_path: Path, mosquitto) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "hub"
    flags = ("--cluster", "--replica-id", "hub-a", "--mqtt-url", mosquitto.url, "--http-port", "0", "--no-rollouts")
    with serve_hub(data_dir, *flags) as urls:
        db = open_database(data_dir / "hub.db")
        try:
            token = TokenStore(db).create("ops", "read").token
        finally:
            db.close()
        deadline, status = time.monotonic() + 20, {}
        while time.monotonic() < deadline and not status.get("leader"):
            status = httpx.get(urls["http"] + "/v1/cluster", headers={"Authorization": f"Bearer {token}"}).json()
            time.sleep(0.2)
        assert status["replica_id"] == "hub-a" and status["leader"], status
        assert status["lease"]["holder"] == "hub-a" and status["lease"]["holder_url"] == urls["http"], status
