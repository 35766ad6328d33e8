"""A device refuses bad updates before anything of them runs, and keeps serving what it had.

Real hub (HTTP with Range, hub-signed manifests, content-addressed artifacts), real store on
disk, real Updater; no MQTT needed: the command goes straight to the Updater.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from ota_fixtures import MODEL, PROFILE, derive, expire, other_profile, releases

from tandem.edge_agent.ota.download import DownloadConfig, Downloader
from tandem.edge_agent.ota.errors import DownloadError, VerificationError
from tandem.edge_agent.ota.machine import WatchPolicy
from tandem.edge_agent.ota.store import ModelStore
from tandem.edge_agent.ota.updater import Updater, UpdaterConfig
from tandem.edge_agent.ota.verify import manifest_digest, verify_manifest_doc
from tandem.protocols.ota import OtaCommand
from tandem.protocols.signing import generate_private_key, load_public_key, public_key_pem


@pytest.fixture(scope="module")
def hub(digits_dir, tmp_path_factory):
    from tandem.cloud_hub.config import HubConfig
    from tandem.cloud_hub.hub import Hub

    rel = releases(digits_dir, lambda: tmp_path_factory.mktemp("ota-releases"))
    root = tmp_path_factory.mktemp("ota-verify")
    extra = {
        "1.5.0": derive(rel["1.0.0"], root / "1.5.0", "1.5.0", expire),
        "1.6.0": derive(rel["1.0.0"], root / "1.6.0", "1.6.0", other_profile),
    }
    h = Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": root / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.url": "mqtt://127.0.0.1:1",
            }
        )
    ).start(http=True)
    try:
        for path in [*rel.values(), *extra.values()]:
            h.registry.register_dir(path)
        h.test_token = h.tokens.create("device", "read").token
        h.releases = rel
        yield h
    finally:
        h.stop()


def _cmd(hub, version: str, **over) -> OtaCommand:
    doc = hub.registry.manifest(MODEL, version)
    now = time.time()
    fields = dict(
        rollout_id="ro-test",
        action="install",
        model=MODEL,
        version=version,
        manifest_url=f"{hub.http_url}/v1/models/{MODEL}/versions/{version}/manifest",
        manifest_sha256=manifest_digest(doc),
        artifact_base_url=f"{hub.http_url}/v1/artifacts",
        issued_at=now,
        deadline=now + 60,
        watch_s=0.0,
    )
    fields.update(over)
    return OtaCommand(**fields)


def _tree(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def device(hub, tmp_path):
    """A store with 1.1.0 active (1.0.0 before it), and an Updater whose steps are recorded."""
    store = ModelStore(tmp_path / "store")
    store.open()
    store.install_initial(hub.releases["1.0.0"])
    store.install_initial(hub.releases["1.1.0"])
    steps: list[tuple[str, str, str]] = []
    switched: list[Path] = []

    def make(trusted=None) -> Updater:
        key = trusted or load_public_key(hub.key.public_pem)
        return Updater(
            store,
            key,
            UpdaterConfig(
                PROFILE,
                DownloadConfig(token=hub.test_token, attempts=2, backoff_s=0.01),
                WatchPolicy(watch_s=0.0),
                poll_s=0.01,
            ),
            on_switch=switched.append,
            publish=lambda step, result, reason, health: steps.append((step, result, reason)),
        )

    before = _tree(store.active_dir)
    yield store, make, steps, switched
    # whatever happened, the active model is the complete, unchanged 1.1.0
    reopened = ModelStore(store.root)
    reopened.open()
    assert reopened.active_version == "1.1.0"
    assert _tree(reopened.active_dir) == before


def _assert_refused(store, steps, switched, terminal: str, reason_part: str) -> None:
    assert steps[-1][0] == terminal, steps
    assert reason_part in steps[-1][2], steps[-1]
    assert switched == []
    assert store.active_version == "1.1.0"
    assert sorted(p.name for p in store.slots.iterdir()) == sorted([store.state.active.slot, store.state.previous.slot])


def test_tampered_file_is_rejected_naming_the_file(hub, device):
    store, make, steps, switched = device
    doc = hub.registry.manifest(MODEL, "1.1.0")
    variant_file = doc["variants"][[v["id"] for v in doc["variants"]].index(doc["profiles"][PROFILE]["chosen"])][
        "files"
    ][0]
    blob = hub.artifacts.path_for(variant_file["sha256"])
    original = blob.read_bytes()
    # 1.1.0 is active already, so the tampered update is a fresh release sharing the same file
    rel = derive(hub.releases["1.0.0"], store.root.parent / "1.7.0", "1.7.0")
    hub.registry.register_dir(rel)
    try:
        blob.chmod(0o644)
        blob.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])  # same size, one byte changed
        assert make().run(_cmd(hub, "1.7.0")) == "failed"
    finally:
        blob.write_bytes(original)
    _assert_refused(store, steps, switched, "failed", f"{variant_file['path']}: sha256 mismatch")
    assert [s[0] for s in steps] == ["downloading", "verifying", "failed"]


def test_wrong_signature_is_rejected(hub, device):
    store, make, steps, switched = device
    stranger = load_public_key(public_key_pem(generate_private_key()))
    assert make(trusted=stranger).run(_cmd(hub, "1.3.0")) == "failed"
    _assert_refused(store, steps, switched, "failed", "signature does not match the trusted key")


def test_manifest_other_than_the_command_names_is_rejected(hub, device):
    store, make, steps, switched = device
    assert make().run(_cmd(hub, "1.3.0", manifest_sha256="0" * 64)) == "failed"
    _assert_refused(store, steps, switched, "failed", "sha256 does not match the command")


def test_expired_manifest_is_rejected(hub, device):
    store, make, steps, switched = device
    assert make().run(_cmd(hub, "1.5.0")) == "failed"
    _assert_refused(store, steps, switched, "failed", "expired at 2001-01-01")


def test_older_version_is_rejected_before_download(hub, device):
    store, make, steps, switched = device
    assert make().run(_cmd(hub, "1.0.0")) == "failed"
    _assert_refused(store, steps, switched, "rejected", "not higher than the highest accepted version 1.1.0")
    assert len(steps) == 1  # nothing was downloaded
    # and the manifest-level check says the same when reached
    doc = hub.registry.manifest(MODEL, "1.0.0")
    with pytest.raises(VerificationError, match="anti-rollback"):
        verify_manifest_doc(
            doc,
            trusted_key=load_public_key(hub.key.public_pem),
            cmd=_cmd(hub, "1.0.0"),
            profile=PROFILE,
            max_accepted="1.1.0",
            now=time.time(),
        )


def test_manifest_for_another_profile_is_rejected(hub, device):
    store, make, steps, switched = device
    assert make().run(_cmd(hub, "1.6.0")) == "failed"
    _assert_refused(store, steps, switched, "failed", "not this device's profile 'cpu-x86'")


def test_failed_self_test_discards_the_staged_slot(hub, device):
    store, make, steps, switched = device
    assert make().run(_cmd(hub, "1.2.0")) == "failed"
    _assert_refused(store, steps, switched, "failed", "self-test: output")
    assert [s[0] for s in steps] == ["downloading", "verifying", "staged", "self_test", "failed"]
    assert store.state.max_accepted == "1.1.0"


def test_download_resumes_with_range_after_an_interruption(hub, tmp_path):
    doc = hub.registry.manifest(MODEL, "1.1.0")
    entry = doc["golden"]["file"]
    url = f"{hub.http_url}/v1/artifacts/{entry['sha256']}"
    dest = tmp_path / "golden.npz"
    full = hub.artifacts.path_for(entry["sha256"]).read_bytes()
    half = len(full) // 2
    (tmp_path / "golden.npz.part").write_bytes(full[:half])
    received: list[int] = []
    dl = Downloader(DownloadConfig(token=hub.test_token), on_progress=received.append)
    try:
        dl.fetch_file(url, dest, entry["size"], entry["sha256"])
        assert sum(received) == len(full) - half  # only the missing half travelled
        assert dest.read_bytes() == full
        assert not (tmp_path / "golden.npz.part").exists()
        with pytest.raises(DownloadError, match="more than the manifest's"):
            dl.fetch_file(url, tmp_path / "short.npz", entry["size"] - 10, entry["sha256"])
    finally:
        dl.close()


def test_download_without_a_token_is_refused_with_the_status(hub, tmp_path):
    dl = Downloader(DownloadConfig(token=None))
    try:
        with pytest.raises(DownloadError, match="HTTP 401"):
            dl.fetch_json(f"{hub.http_url}/v1/models/{MODEL}/versions/1.1.0/manifest")
    finally:
        dl.close()


def _flaky_golden_reader(monkeypatch, failures: int) -> list[int]:
    """read_npz raising CPython 3.11's AST race error `failures` times, then reading for real."""
    from tandem.edge_agent.ota import selftest, updater

    real = selftest.read_npz
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise SystemError("AST constructor recursion depth mismatch (before=1, after=3)")
        return real(*args, **kwargs)

    monkeypatch.setattr(selftest, "read_npz", flaky)
    monkeypatch.setattr(updater, "SELFTEST_RETRY_S", 0.01)
    return calls


def test_a_self_test_harness_error_is_retried_and_is_no_verdict_on_a_good_release(hub, tmp_path, monkeypatch):
    calls = _flaky_golden_reader(monkeypatch, failures=1)
    store = ModelStore(tmp_path / "store")
    store.open()
    store.install_initial(hub.releases["1.1.0"])
    steps: list[tuple[str, str, str]] = []
    switched: list[Path] = []
    updater = Updater(
        store,
        load_public_key(hub.key.public_pem),
        UpdaterConfig(
            PROFILE, DownloadConfig(token=hub.test_token, attempts=2, backoff_s=0.01), WatchPolicy(watch_s=0.0)
        ),
        on_switch=switched.append,
        publish=lambda step, result, reason, health: steps.append((step, result, reason)),
    )
    updater.run(_cmd(hub, "1.3.0"))  # passes its self-test (see ota_fixtures.releases)
    names = [s[0] for s in steps]
    assert names[:5] == ["downloading", "verifying", "staged", "self_test", "switched"], steps
    assert len(calls) == 2 and switched == [store.slots / store.state.active.slot]


def test_a_self_test_harness_error_that_persists_fails_as_one_not_as_a_bad_variant(hub, device, monkeypatch):
    store, make, steps, switched = device
    calls = _flaky_golden_reader(monkeypatch, failures=99)
    assert make().run(_cmd(hub, "1.3.0")) == "failed"
    _assert_refused(store, steps, switched, "failed", "self-test error: ")
    assert "AST constructor recursion depth mismatch" in steps[-1][2] and "after 3 attempts" in steps[-1][2]
    assert len(calls) == 3


def test_a_wall_clock_step_during_the_health_watch_neither_ends_nor_stretches_it(hub, tmp_path):
    """An NTP step of +1 h 0.2 s into a 1 s watch: the watch still lasts 1 s (it ended at once on the wall clock)."""
    store = ModelStore(tmp_path / "store")
    store.open()
    store.install_initial(hub.releases["1.1.0"])
    steps: list[tuple[str, float]] = []
    switched_at: list[float] = []

    def wall() -> float:  # steps one hour ahead 0.2 s after the switch
        stepped = bool(switched_at) and time.monotonic() - switched_at[0] > 0.2
        return time.time() + (3600.0 if stepped else 0.0)

    updater = Updater(
        store,
        load_public_key(hub.key.public_pem),
        UpdaterConfig(
            PROFILE, DownloadConfig(token=hub.test_token, attempts=2, backoff_s=0.01), WatchPolicy(watch_s=1.0), 0.02
        ),
        on_switch=lambda path: switched_at.append(time.monotonic()),
        publish=lambda step, result, reason, health: steps.append((step, time.monotonic())),
        clock=wall,
    )
    # no traffic during the watch: kept at its end (commit_without_traffic)
    assert updater.run(_cmd(hub, "1.3.0", watch_s=1.0)) == "committed"
    watched = dict(steps)["committed"] - dict(steps)["watching"]
    assert 0.9 <= watched < 5.0, watched
