"""A new Hub on the same data dir keeps models, devices, tokens and its release key."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tandem.cloud_hub.hub import Hub
from tandem.cloud_hub.storage.db import MIGRATIONS, DatabaseError, Migration, open_database
from tandem.protocols import signing


def test_restart_keeps_everything(hub_config, hub_model_dir):
    with Hub(hub_config).start() as first:
        admin = first.tokens.create("admin", "admin")
        reader = first.tokens.create("reader", "read")
        revoked = first.tokens.create("gone", "read")
        first.tokens.revoke(revoked.info.token_id)
        first.registry.register_dir(hub_model_dir)
        headers = {"Authorization": f"Bearer {admin.token}"}
        r = httpx.post(
            f"{first.http_url}/v1/devices",
            headers=headers,
            timeout=10,
            json={
                "device_id": "cam-7",
                "profile": "cpu-x86",
                "agent_version": "0.1.0",
                "tags": {"site": "lyon"},
                "model_name": "digits",
                "model_version": "1.0.0",
            },
        )
        assert r.status_code == 201  # created
        key_pem = first.key.public_pem
        manifest_before = first.registry.manifest("digits", "1.0.0")

    with Hub(hub_config).start() as second:
        base = second.http_url
        for token in (admin.token, reader.token):
            assert httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {revoked.token}"}).status_code == 401
        h = {"Authorization": f"Bearer {reader.token}"}
        assert httpx.get(f"{base}/v1/keys/release", headers=h).json()["public_key_pem"] == key_pem
        served = httpx.get(f"{base}/v1/models/digits/versions/1.0.0/manifest", headers=h).json()
        assert served == manifest_before
        signing.verify_manifest(served, signing.load_public_key(key_pem))
        devices = httpx.get(f"{base}/v1/devices", headers=h, params={"tag": "site=lyon"}).json()
        assert [d["device_id"] for d in devices["items"]] == ["cam-7"]
        assert devices["items"][0]["model_version"] == "1.0.0"
        sha = served["variants"][0]["files"][0]["sha256"]
        blob = httpx.get(f"{base}/v1/artifacts/{sha}", headers=h)
        assert blob.status_code == 200 and hashlib.sha256(blob.content).hexdigest() == sha
        assert second.db.schema_version() == MIGRATIONS[-1].version


def test_migrations_apply_once_in_order_and_refuse_a_newer_database(tmp_path):
    path = tmp_path / "hub.db"
    open_database(path).close()
    extra = MIGRATIONS + (
        Migration(MIGRATIONS[-1].version + 1, "add notes", ("CREATE TABLE notes (id INTEGER PRIMARY KEY)",)),
    )
    db = open_database(path, extra)
    assert db.schema_version() == extra[-1].version
    assert "notes" in db.tables()
    assert db.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
    db.close()
    db = open_database(path, extra)  # applying again is a no-op
    assert len(db.query("SELECT * FROM schema_migrations")) == len(extra)
    db.close()
    with pytest.raises(DatabaseError, match="newer than this Tandem"):
        open_database(path, MIGRATIONS)


def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path):
    path = tmp_path / "hub.db"
    broken = MIGRATIONS + (Migration(MIGRATIONS[-1].version + 1, "broken", ("CREATE TABLE ok_table (x)", "NOT SQL")),)
    with pytest.raises(DatabaseError, match="broken"):
        open_database(path, broken)
    db = open_database(path)
    assert db.schema_version() == MIGRATIONS[-1].version and "ok_table" not in db.tables()
    db.close()


def test_a_corrupt_release_key_is_a_clear_error_not_a_new_key(hub_config):
    from tandem.cloud_hub.errors import ConfigError

    Hub(hub_config).stop()
    hub_config.release_key_path.write_text("garbage")
    with pytest.raises(ConfigError, match="restore it from backup"):
        Hub(hub_config)
    assert hub_config.release_key_path.read_text() == "garbage"  # never silently replaced
