"""Corrupt storage: `tandem-hub check` names file and table, and a hub refuses to start on it
with one line (not a 500 on every request). Real SQLite files, a page overwritten on disk."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tandem.cloud_hub.cli import main
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.storage.doctor import StorageCorruptError


def _config(data_dir) -> HubConfig:
    return HubConfig.from_keys({"data_dir": data_dir, "http.port": 0, "grpc.port": 0, "mqtt.url": "mqtt://127.0.0.1:1"})


def _fill_devices(db_path, n: int = 400) -> None:
    """Enough rows that the devices table owns pages of its own."""
    conn = sqlite3.connect(db_path)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(devices)")]
    notnull = {r[1]: r[3] for r in conn.execute("PRAGMA table_info(devices)")}
    rows = []
    for i in range(n):
        rows.append([f"dev-{i:04d}" if c == "device_id" else ("x" * 40 if notnull[c] else None) for c in cols])
    conn.executemany(f"INSERT INTO devices ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", rows)
    conn.commit()
    conn.close()


def _smash_a_page_of(db_path, table: str) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?", [table]).fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    with open(db_path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xde\xad\xbe\xef" * (page_size // 4))


@pytest.mark.sqlite_only  # hub.db's integrity; the PostgreSQL check has its own tests below
def test_check_passes_a_healthy_data_dir_and_names_a_bad_table(tmp_path, capsys):
    root = tmp_path / "hub"
    Hub(_config(root)).stop()
    assert main(["check", "--data-dir", str(root)]) == 0
    assert "ok       hub.db" in capsys.readouterr().out
    _fill_devices(root / "hub.db")
    _smash_a_page_of(root / "hub.db", "devices")
    assert main(["check", "--data-dir", str(root), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["databases"]["hub.db"] == "corrupt"
    assert any(line.startswith("hub.db table devices:") for line in report["problems"]), report["problems"]


@pytest.mark.sqlite_only  # hub.db's integrity; the PostgreSQL check has its own tests below
def test_a_hub_on_a_corrupt_database_refuses_with_one_line(tmp_path, capsys):
    root = tmp_path / "hub"
    Hub(_config(root)).stop()
    _fill_devices(root / "hub.db")
    _smash_a_page_of(root / "hub.db", "devices")
    with pytest.raises(StorageCorruptError, match=r"corrupt database: hub.db table devices") as err:
        Hub(_config(root))
    assert "\n" not in str(err.value)
    (root / "hub.db").unlink()
    Hub(_config(root)).stop()


@pytest.mark.sqlite_only  # hub.db's integrity; the PostgreSQL check has its own tests below
def test_a_stored_manifest_whose_signature_fails_is_named(tmp_path, capsys):
    root = tmp_path / "hub"
    Hub(_config(root)).stop()
    conn = sqlite3.connect(root / "hub.db")
    conn.execute(
        "INSERT INTO models VALUES ('digits', '9.9.9', '9.9.9', 'x', ?, 'now', 0, 0)",
        [json.dumps({"name": "digits", "version": "9.9.9", "signature": {"key_id": "k", "sig": "AAAA"}})],
    )
    conn.commit()
    conn.close()
    assert main(["check", "--data-dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM  hub.db table models: digits 9.9.9: signature does not verify" in out
