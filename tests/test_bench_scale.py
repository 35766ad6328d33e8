"""bench/scale.py runs every row against real replicas, brokers and databases and prints figures, not guesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pg_fixtures import postgres_bindir
from telemetry_fixtures import needs_mosquitto, python_env

BENCH = Path(__file__).resolve().parents[1] / "bench" / "scale.py"


@needs_mosquitto
@pytest.mark.slow
def test_scale_bench_measures_every_row_and_stores_every_window():
    if postgres_bindir() is None:
        pytest.skip("postgresql server not installed (make test installs it: apt-get install postgresql)")
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--json",
            "--devices",
            "40",
            "--windows-per-device",
            "2",
            "--retention-hours",
            "0",
        ],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["host"]["cpu_features"] and report["host"]["cpus"] >= 1
    assert set(report["ingest"]) == {f"{b}_{n}_replica" for b in ("sqlite", "postgresql") for n in (1, 2)}
    for name, row in report["ingest"].items():
        assert "skipped" not in row, (name, row)
        for phase in ("live", "drain"):
            assert row[phase]["stored"] == row[phase]["windows"] == 80, (name, phase, row[phase])
            assert row[phase]["cpu_s_per_1000_windows"] >= 0, (name, phase)  # 80 windows: a few 10 ms ticks
        assert sum(row["stored_per_replica"]) == 160 and len(row["stored_per_replica"]) == row["replicas"]
        assert 300 < row["storage"]["bytes_per_window"] < 5000, (name, row["storage"])
    assert report["ingest"]["postgresql_1_replica"]["drain"]["database_server_cpu_s_per_1000_windows"] >= 0
    for backend in ("sqlite", "postgresql"):
        failover = report["failover"][backend]
        assert failover["burst_stored"] == failover["burst_windows"] == 80, failover
        assert failover["epoch_after"] == 2 and 0 < failover["takeover_s"] < 30, failover
