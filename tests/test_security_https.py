"""HTTPS on the hub's REST API, console and artifacts (HubConfig.tls_dir), and per-token REST rate limits.

A real Hub started with a `tandem-hub pki init` folder serves uvicorn over TLS with the hub's server
certificate on a loopback port; its broker URL points nowhere (mqtts://127.0.0.1:1), since nothing here
needs MQTT. The agent's own Downloader fetches a registered model over that port with the device's files.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from tandem.cloud_hub.client import HubClient, HubClientError
from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.errors import ConfigError
from tandem.cloud_hub.ratelimit import RateLimiter
from tandem.edge_agent.ota.download import DownloadConfig, Downloader
from tandem.edge_agent.ota.errors import DownloadError
from tandem.edge_agent.ota.verify import files_for, verify_files
from hub_registry_fixtures import make_model_dir
from tandem.protocols.manifest import Manifest

NOWHERE = "mqtts://127.0.0.1:1"  # never reached: telemetry off, rollouts connect in the background


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    from tandem.cloud_hub.cli import main

    folder = tmp_path_factory.mktemp("https-pki") / "pki"
    assert main(["pki", "init", "--dir", str(folder)]) == 0
    assert main(["pki", "issue", "dev-a", "--dir", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def tls_hub(pki_dir, digits_dir, tmp_path_factory):
    from tandem.cloud_hub.hub import Hub

    root = tmp_path_factory.mktemp("https-hub")
    hub = Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": root / "data",
                "http.port": 0,
                "mqtt.url": NOWHERE,
                "telemetry.enabled": False,
                "tls_dir": pki_dir,
                "http.client_certs": "optional",
            }
        )
    ).start()
    try:
        hub.registry.register_dir(make_model_dir(digits_dir, root / "model"))
        hub.test_token = hub.tokens.create("device", "read").token
        yield hub
    finally:
        hub.stop()


def _device_tls(pki_dir: Path):
    from tandem.cloud_hub.pki import Pki

    return Pki(pki_dir).device_files("dev-a")


def test_a_tls_hub_serves_https_and_hands_devices_https_urls(tls_hub):
    assert tls_hub.http_url.startswith("https://127.0.0.1:")
    assert all(url.startswith("https://") for name, url in tls_hub.urls().items() if name in ("http", "docs"))
    assert tls_hub.rollouts is not None  # started by the hub: its command URLs derive from this
    assert tls_hub.rollouts.config.public_url == tls_hub.http_url


def test_rest_over_https_verifies_with_the_fleet_ca_and_fails_without_it(tls_hub, pki_dir, monkeypatch):
    with HubClient(tls_hub.http_url, tls_hub.test_token, ca=pki_dir / "ca.crt") as client:
        assert client.health()["status"] == "ok"
        assert client.list_models()["total"] == 1
    monkeypatch.setenv("TANDEM_HUB_CA", str(pki_dir / "ca.crt"))
    with HubClient(tls_hub.http_url, tls_hub.test_token) as client:  # the env var, as the CLI reads it
        assert client.list_models()["total"] == 1
    monkeypatch.delenv("TANDEM_HUB_CA")
    with HubClient(tls_hub.http_url, tls_hub.test_token) as client:  # system trust store: not our private CA
        with pytest.raises(HubClientError, match="CERTIFICATE_VERIFY_FAILED"):
            client.health()
    with pytest.raises(HubClientError, match="does not exist"):
        HubClient(tls_hub.http_url, ca=pki_dir / "missing.crt")


def test_the_cli_takes_ca(tls_hub, pki_dir, capsys):
    from tandem.cloud_hub.cli import main

    remote = ["--url", tls_hub.http_url, "--token", tls_hub.test_token, "--json"]
    assert main(["models", "list", *remote, "--ca", str(pki_dir / "ca.crt")]) == 0
    assert '"digits"' in capsys.readouterr().out


def test_plain_http_to_the_https_port_gets_no_answer(tls_hub):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_hub.http_port}/healthz", timeout=5)


def test_optional_client_certificates_accept_a_device_identity_and_refuse_a_foreign_one(tls_hub, pki_dir, tmp_path):
    from tandem.cloud_hub.pki import Pki

    ctx = _device_tls(pki_dir).client_context()
    assert httpx.get(f"{tls_hub.http_url}/healthz", verify=ctx, timeout=5).status_code == 200
    foreign = Pki.init(tmp_path / "other-ca")  # a certificate signed by another CA is refused in the handshake
    foreign.issue_device("dev-x")
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    files = foreign.device_files("dev-x")
    ctx.load_cert_chain(str(files.cert), str(files.key))
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{tls_hub.http_url}/healthz", verify=ctx, timeout=5)


def test_the_agent_downloader_fetches_a_model_over_https_resuming_with_range(tls_hub, pki_dir, tmp_path):
    doc = tls_hub.registry.manifest("digits", "1.0.0")
    base = tls_hub.http_url
    dl = Downloader(DownloadConfig(token=tls_hub.test_token, tls=_device_tls(pki_dir), attempts=2, backoff_s=0.01))
    try:
        assert dl.fetch_json(f"{base}/v1/models/digits/versions/1.0.0/manifest") == doc
        manifest = Manifest.from_dict(doc)
        entries = {e.path: e for v in manifest.variants for e in files_for(manifest, v)}.values()
        staging = tmp_path / "staging"
        for entry in entries:
            full = tls_hub.artifacts.path_for(entry.sha256).read_bytes()
            part = staging / (entry.path + ".part")
            part.parent.mkdir(parents=True, exist_ok=True)
            part.write_bytes(full[: len(full) // 2])  # an earlier, interrupted attempt
            received: list[int] = []
            dl.on_progress = received.append
            dl.fetch_file(f"{base}/v1/artifacts/{entry.sha256}", staging / entry.path, entry.size, entry.sha256)
            assert sum(received) == len(full) - len(full) // 2  # only the missing part travelled
        verify_files(staging, list(entries))  # the agent's own size and sha256 check
        assert len(entries) >= 1
    finally:
        dl.close()


def test_the_downloader_refuses_an_unverifiable_hub_at_once(tls_hub):
    dl = Downloader(DownloadConfig(token=tls_hub.test_token, attempts=5, backoff_s=30.0))  # system trust store
    try:  # a retry could not help, so none is made (backoff_s=30 would show as a hung test)
        with pytest.raises(DownloadError, match="TLS certificate does not verify"):
            dl.fetch_json(f"{tls_hub.http_url}/v1/models/digits/versions/1.0.0/manifest")
    finally:
        dl.close()


def test_required_client_certificates(pki_dir, tmp_path):
    from tandem.cloud_hub.hub import Hub

    with Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "data",
                "http.port": 0,
                "mqtt.url": NOWHERE,
                "telemetry.enabled": False,
                "rollouts.enabled": False,
                "tls_dir": pki_dir,
                "http.client_certs": "required",
            }
        )
    ).start() as hub:
        ca_only = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{hub.http_url}/healthz", verify=ca_only, timeout=5).raise_for_status()
        ctx = _device_tls(pki_dir).client_context()
        assert httpx.get(f"{hub.http_url}/healthz", verify=ctx, timeout=5).status_code == 200


def test_rest_tls_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="http.client_certs .* needs tls_dir"):
        HubConfig.from_keys({"http.client_certs": "optional"})
    with pytest.raises(ConfigError, match="http.client_certs .* is not one of none, optional, required"):
        HubConfig.from_keys({"tls_dir": tmp_path, "mqtt.url": NOWHERE, "http.client_certs": "yes"})
    with pytest.raises(ConfigError, match="http.burst"):
        HubConfig.from_keys({"http.burst": 0.5})
    with pytest.raises(ConfigError, match="http.rate_per_s"):
        HubConfig.from_keys({"http.rate_per_s": 0})
    cfg = HubConfig.load(env={"TANDEM_HUB_HTTP_RATE_PER_S": "5", "TANDEM_HUB_HTTP_BURST": "10"})
    assert (cfg.http.rate_per_s, cfg.http.burst) == (5.0, 10.0)
    assert (HubConfig().http.rate_per_s, HubConfig().http.burst) == (20.0, 60.0)


# -- per-token rate limits ---------------------------------------------------------------


def test_the_bucket_says_how_long_to_wait():
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.take("t") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("t") == pytest.approx(0.5)  # one token at 2/s
    assert limiter.take("other") == 0.0
    now[0] += 0.25
    assert limiter.take("t") == pytest.approx(0.25)
    now[0] += 0.25
    assert limiter.allow("t") and not limiter.allow("t")
    assert limiter.refused == 3


def test_a_burst_over_the_rest_limit_gets_429_with_retry_after_and_other_tokens_go_on(tmp_path):
    from tandem.cloud_hub.hub import Hub

    # 0.01/s: the bucket cannot refill within this test, so the counts below are exact
    with Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "data",
                "http.port": 0,
                "mqtt.url": "mqtt://127.0.0.1:1",
                "telemetry.enabled": False,
                "rollouts.enabled": False,
                "http.rate_per_s": 0.01,
                "http.burst": 5,
            }
        )
    ).start() as hub:
        busy, calm = hub.tokens.create("busy", "read").token, hub.tokens.create("calm", "read").token
        with httpx.Client(base_url=hub.http_url, timeout=10) as http:
            codes = [http.get("/v1/models", headers={"Authorization": f"Bearer {busy}"}).status_code for _ in range(8)]
            assert codes == [200] * 5 + [429] * 3
            refused = http.get("/v1/hub", headers={"Authorization": f"Bearer {busy}"})
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 60  # one token at 0.01/s: about 100 s
            assert set(refused.json()) == {"detail"} and "rate limit" in refused.json()["detail"]
            assert http.get("/v1/models", headers={"Authorization": f"Bearer {calm}"}).status_code == 200
            assert all(http.get("/healthz").status_code == 200 for _ in range(10))  # exempt
            assert http.get("/v1/models").status_code == 401  # no token: refused before any bucket
        with HubClient(hub.http_url, busy) as client:
            with pytest.raises(HubClientError, match="HTTP 429: token .* over its rate limit") as err:
                client.list_models()
            assert err.value.status == 429


def test_a_rollout_waves_downloads_on_one_shared_token_are_not_metered(tmp_path, digits_dir):
    """Manifests and artifacts are the fleet's data plane: a wave of devices on one token must not get 429s."""
    from tandem.cloud_hub.hub import Hub

    model_dir = make_model_dir(digits_dir, tmp_path / "model")
    with Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "data",
                "http.port": 0,
                "mqtt.url": "mqtt://127.0.0.1:1",
                "telemetry.enabled": False,
                "rollouts.enabled": False,
                "http.rate_per_s": 0.01,
                "http.burst": 2,
            }
        )
    ).start() as hub:
        hub.registry.register_dir(model_dir)
        fleet = hub.tokens.create("fleet", "read").token
        auth = {"Authorization": f"Bearer {fleet}"}
        manifest = Manifest.from_dict(hub.registry.manifest("digits", "1.0.0"))
        sha = manifest.variants[0].files[0].sha256
        with httpx.Client(base_url=hub.http_url, timeout=10, headers=auth) as http:
            for _ in range(20):  # 20 devices of one wave
                assert http.get("/v1/models/digits/versions/1.0.0/manifest").status_code == 200
                assert http.head(f"/v1/artifacts/{sha}").status_code == 200
                assert http.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=0-9"}).status_code == 206
            assert [http.get("/v1/models").status_code for _ in range(3)] == [200, 200, 429]  # the API still is


def test_429_is_documented_on_authenticated_routes():
    from tandem.cloud_hub.rest import create_app

    spec = create_app(None).openapi()
    assert "429" in spec["paths"]["/v1/models"]["get"]["responses"]
    assert "429" not in spec["paths"]["/healthz"]["get"]["responses"]


def test_the_downloader_waits_out_a_429_without_spending_attempts(tmp_path):
    from tandem.cloud_hub.hub import Hub

    with Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "data",
                "http.port": 0,
                "mqtt.url": "mqtt://127.0.0.1:1",
                "telemetry.enabled": False,
                "rollouts.enabled": False,
            }
        )
    ).start() as hub:
        token = hub.tokens.create("device", "read").token
        hub.app.state.rest_limiter = limiter = RateLimiter(1.0, 1)  # a 429 on the second call, 1 s later a token
        dl = Downloader(DownloadConfig(token=token, attempts=1))
        try:
            assert dl.fetch_json(f"{hub.http_url}/v1/keys/release")["public_key_pem"]
            assert dl.fetch_json(f"{hub.http_url}/v1/keys/release")["public_key_pem"]  # after one Retry-After
            assert limiter.refused >= 1
        finally:
            dl.close()
        hub.app.state.rest_limiter = RateLimiter(0.01, 1)  # then Retry-After is 30 s (the cap), over the budget
        short = Downloader(DownloadConfig(token=token, attempts=1, max_rate_limited_s=0.5))
        try:
            short.fetch_json(f"{hub.http_url}/v1/keys/release")
            with pytest.raises(DownloadError, match="kept answering 429"):
                short.fetch_json(f"{hub.http_url}/v1/keys/release")
        finally:
            short.close()
