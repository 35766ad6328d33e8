"""Failover of hub replicas with real processes (bench/faults_replicas.py): two `Hub` processes in cluster
mode on one data dir and a real Mosquitto, their state in SQLite files there or in a throwaway PostgreSQL
database (tests/pg_fixtures.py); the lease holder is SIGKILLed and stays dead.

Mid-rollout (devices downloading wave 2): the other replica leads within 10 s, the rollout goes on from
the wave it was in and completes, and no device is commanded into another version. Mid-burst of
telemetry: every window the agents sent is stored once (the killed replica's in-flight share comes back
through resend requests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pg_fixtures import BACKENDS
from telemetry_fixtures import python_env

BENCH = Path(__file__).resolve().parents[1] / "bench" / "faults_replicas.py"
TAKEOVER_LIMIT_S = 10.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto not installed"),
]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest) -> list[str]:
    """The bench's storage flags per backend: none (SQLite in the data dir), or a fresh PostgreSQL database."""
    return [] if request.param == "sqlite" else ["--database-url", str(request.getfixturevalue("pg_url"))]


def run_bench(*args: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, str(BENCH), "--json", *args], env=python_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout)["scenarios"]  # type: ignore[no-any-return]


def test_lease_holder_killed_mid_rollout_the_other_replica_finishes_it(
    digits_dir: Path, tmp_path_factory: pytest.TempPathFactory, storage: list[str]
) -> None:
    models = tmp_path_factory.getbasetemp() / "replica-failover-models"  # compiled once for both backends
    if not (models / "digits").exists():
        shutil.copytree(digits_dir, models / "digits")
    args = ["--only", "rollout", "--kill-at", "sending", "--rollout-devices", "3", "--models-dir", str(models)]
    r = run_bench(*args, *storage)["rollout"]
    assert "error" not in r, r
    assert r["takeover_s"] <= TAKEOVER_LIMIT_S, r
    assert r["epochs"][1] > r["epochs"][0] and r["new_holder"] != r["killed"], r
    assert r["wave_at_kill"] == 2 and r["first_gate_after_kill"] == 2, r  # it went on from the wave it was in
    assert r["waves_opened"] == [1, 2, 3], r  # each wave opened once, none again by the new holder
    assert r["status"] == "completed", r
    assert r["devices_not_committed"] == [] and r["devices_on_new_version"] == 3, r
    assert r["devices_commanded_into_another_version"] == {}, r


def test_lease_holder_killed_mid_burst_no_window_is_lost_or_stored_twice(storage: list[str]) -> None:
    r = run_bench("--only", "telemetry", "--devices", "3", "--between-s", "3", "--settle-s", "60", *storage)[
        "telemetry"
    ]
    assert "error" not in r, r
    assert r["lease_takeover_s"] <= TAKEOVER_LIMIT_S, r
    assert r["sent"] > 100 and r["stored_at_kill"] > 0, r
    assert r["missing"] == 0 and r["duplicated"] == 0, r
    assert r["gaps_open"] == 0 and r["gaps_lost_hub"] == 0 and r["lost_local_agents"] == 0, r
