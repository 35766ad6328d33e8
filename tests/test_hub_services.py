"""`Hub(...).start()` -- what `tandem-hub serve` runs -- brings telemetry ingestion, the drift engine
and OTA rollouts with it, serves them over REST, and unwinds them in reverse on stop."""

from __future__ import annotations

import logging
import time

import httpx
import numpy as np

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub
from hub_registry_fixtures import make_model_dir
from telemetry_fixtures import needs_mosquitto
from waiting import wait_for

UNREACHABLE = "mqtt://127.0.0.1:1"


def api(hub: Hub, scope: str = "read") -> httpx.Client:
    token = hub.tokens.create(f"test-{scope}", scope).token
    return httpx.Client(base_url=hub.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


@needs_mosquitto
def test_a_default_hub_ingests_an_agents_telemetry_window_and_serves_it_on_rest(tmp_path, digits_dir):
    from tandem.edge_agent.telemetry import TelemetryService
    from tandem.protocols.manifest import load_manifest

    model_dir = make_model_dir(digits_dir, tmp_path / "model")
    with Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.broker": "mosquitto",
            }
        )
    ).start() as hub:
        hub.registry.register_dir(model_dir)
        urls = hub.urls()
        assert urls["telemetry"] == hub.http_url + "/v1/telemetry/windows"
        assert urls["rollouts"] == hub.http_url + "/v1/rollouts" and urls["drift"] == hub.http_url + "/v1/drift/status"
        assert hub.telemetry.ingest.wait_subscribed(10)
        x = np.load(digits_dir / "test.npz")
        inputs = x[x.files[0]].astype(np.float32)[:20]
        with TelemetryService(
            hub.mqtt_url,
            "cam-7",
            load_manifest(model_dir),
            tmp_path / "agent",
            window_s=60,
            profile="cpu-x86",
            tags={"site": "lyon"},
        ) as agent:
            for row in inputs:
                agent.record("edge", 2.5, 0.9, 3, {"input": row[None, :]})
            agent.record("cloud", 40.0, 0.3, 5, {"input": inputs[:1]})
            agent.flush()
            assert agent.publisher.wait_drained(10)
        assert wait_for(lambda: hub.telemetry.store.count_windows("cam-7") == 1, 10)
        hub.telemetry.evaluate(time.time())

        with api(hub) as http:
            page = http.get("/v1/telemetry/windows", params={"device_id": "cam-7"}).json()
            assert page["total"] == 1
            row = page["items"][0]
            assert (row["model_name"], row["model_version"], row["sequence"]) == ("digits", "1.0.0", 1)
            assert (row["edge"], row["cloud"], row["profile"]) == (20, 1, "cpu-x86")
            series = http.get("/v1/telemetry/devices/cam-7").json()["items"]
            assert [(r["sequence"], r["edge"], r["cloud"]) for r in series] == [(1, 20, 1)]
            model = http.get("/v1/telemetry/models/digits", params={"model_version": "1.0.0"}).json()["items"]
            assert sum(b["windows"] for b in model) == 1
            drift = http.get("/v1/drift/status").json()
            assert drift["subscribed"] is True and drift["ingest"]["stored"] == 1 and drift["evaluated_at"] is not None
            assert http.get("/v1/drift/alerts").json()["total"] == 0
            assert http.get("/v1/rollouts").json()["total"] == 0


def test_an_unreachable_broker_does_not_keep_the_hub_from_starting_and_stop_unwinds_in_reverse(tmp_path):
    seen: list[str] = []

    class Probe:
        def start(self, hub: Hub) -> None:  # an added service starts after telemetry, before HTTP and rollouts
            seen.append(
                f"start telemetry={hub.telemetry is not None} http={hub.http_url is not None} "
                f"rollouts={hub.rollouts is not None}"
            )
            self.hub = hub

        def stop(self) -> None:
            seen.append(f"stop telemetry={self.hub.telemetry is not None} rollouts={self.hub.rollouts is not None}")

    hub = Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "mqtt.url": UNREACHABLE,
            }
        )
    )
    hub.add_service(Probe())
    hub.start()
    try:
        assert hub.telemetry is not None and hub.rollouts is not None
        with api(hub) as http:
            assert http.get("/v1/drift/alerts").json()["total"] == 0
            assert http.get("/v1/drift/status").json()["subscribed"] is False
            assert http.get("/v1/rollouts").status_code == 200
    finally:
        hub.stop()
    assert seen == ["start telemetry=True http=False rollouts=False", "stop telemetry=True rollouts=False"]
    assert hub.telemetry is None and hub.rollouts is None


def test_telemetry_and_rollouts_turned_off_answer_503_saying_so(tmp_path):
    config = HubConfig.load(
        env={"TANDEM_HUB_TELEMETRY_ENABLED": "false", "TANDEM_HUB_ROLLOUTS_ENABLED": "no"},
        overrides={"data_dir": tmp_path / "hub", "http.port": 0, "mqtt.url": UNREACHABLE},
    )
    with Hub(config).start() as hub, api(hub) as http:
        assert not {"telemetry", "drift", "rollouts"} & set(hub.urls())
        r = http.get("/v1/telemetry/windows")
        assert r.status_code == 503 and "not running" in r.json()["detail"]
        r = http.get("/v1/rollouts")
        assert r.status_code == 503 and "TANDEM_HUB_ROLLOUTS_ENABLED" in r.json()["detail"]
        assert http.get("/v1/devices").status_code == 200


def test_the_embedded_broker_runs_without_telemetry_and_rollouts_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="tandem.cloud_hub.hub"):
        with Hub(
            HubConfig.from_keys(
                {
                    "publishers.trust_on_first_use": True,
                    "data_dir": tmp_path / "hub",
                    "http.port": 0,
                    "mqtt.broker": "embedded",
                }
            )
        ).start() as hub:
            assert hub.broker_kind == "embedded" and hub.telemetry is None and hub.rollouts is None
    assert "telemetry not started: it needs MQTT 5" in caplog.text and "install Mosquitto" in caplog.text


def test_the_hub_config_reaches_the_drift_engine_and_the_rollout_service(tmp_path):
    config = HubConfig.from_keys(
        {
            "publishers.trust_on_first_use": True,
            "data_dir": tmp_path / "hub",
            "http.port": 0,
            "mqtt.url": UNREACHABLE,
            "http.public_url": "http://hub.example:8080",
            "drift.eval_interval_s": 2.5,
            "drift.span_s": 120,
            "drift.open_above": 0.4,
            "drift.close_below": 0.2,
            "telemetry.share_group": "replicas",
            "rollouts.tick_s": 0.2,
            "rollouts.watch_s": 30,
        }
    )
    with Hub(config).start() as hub:
        assert hub.telemetry.config.eval_interval_s == 2.5
        drift = hub.telemetry.engine.config
        assert drift.span_s == 120 and (drift.distribution.open_above, drift.distribution.close_below) == (0.4, 0.2)
        assert hub.telemetry.ingest.config.topic_filter.startswith("$share/replicas/")
        assert hub.rollouts.config.public_url == "http://hub.example:8080"  # what OTA commands point devices at
        assert (hub.rollouts.config.tick_s, hub.rollouts.config.watch_s) == (0.2, 30)
        assert hub.urls()["public"] == "http://hub.example:8080"


def test_rollout_gates_count_the_hubs_open_drift_alerts_per_version(tmp_path):
    with Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "mqtt.url": UNREACHABLE,
            }
        )
    ).start() as hub:
        assert hub.rollouts.drift_alerts("digits", "1.1.0") == 0
        alert = hub.telemetry.store.open_alert(
            "digits", "1.1.0", '{"profile": "cpu-x86", "tags": {}}', "input.mean", {"value": 0.4}
        )
        hub.telemetry.store.open_alert("digits", "1.0.0", '{"profile": "cpu-x86", "tags": {}}', "classes", {})
        assert hub.rollouts.drift_alerts("digits", "1.1.0") == 1
        hub.telemetry.store.close_alert(alert, {"value": 0.01})
        assert hub.rollouts.drift_alerts("digits", "1.1.0") == 0


def test_own_telemetry_and_rollout_settings_replace_the_defaults_without_doubling(tmp_path):
    from tandem.cloud_hub.rollouts.attach import attach_rollouts
    from tandem.cloud_hub.telemetry import TelemetryServiceConfig
    from tandem.cloud_hub.telemetry.hub_service import HubTelemetry

    hub = Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "mqtt.url": UNREACHABLE,
            }
        )
    )
    own = HubTelemetry(TelemetryServiceConfig(eval_interval_s=1.5))
    hub.add_service(own)
    with hub.start():
        assert hub.telemetry is own.service and hub.telemetry.config.eval_interval_s == 1.5
        assert sum(isinstance(s, HubTelemetry) for s in hub._started_services) == 1
        first = hub.rollouts
        second = attach_rollouts(hub, tick_s=0.1)
        assert hub.rollouts is second and second is not first and second.config.tick_s == 0.1
        paths = [p for p in hub.app.openapi()["paths"] if p.startswith("/v1/rollouts")]
        assert len(paths) == len(set(paths)) == 6
        with api(hub) as http:
            assert http.get("/v1/rollouts").status_code == 200
    assert hub.rollouts is None


def test_rollout_routes_are_found_by_name_in_the_app_however_deeply_included(tmp_path):
    from fastapi import APIRouter, FastAPI

    from tandem.cloud_hub.rollouts.attach import _serves_rollouts
    from tandem.cloud_hub.rollouts.routes import router

    assert not _serves_rollouts(FastAPI())  # attach_rollouts then includes them
    direct, nested, outer = FastAPI(), FastAPI(), APIRouter(prefix="/fleet")
    direct.include_router(router)
    outer.include_router(router)
    nested.include_router(outer)
    assert _serves_rollouts(direct) and _serves_rollouts(nested)
    with Hub(HubConfig.from_keys({"data_dir": tmp_path / "hub"})) as hub:
        assert _serves_rollouts(hub.app)  # create_app includes them: never twice


def test_without_http_or_public_url_rollouts_wait_for_a_url(tmp_path):
    with Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "mqtt.url": UNREACHABLE,
            }
        )
    ).start(http=False) as hub:
        assert hub.telemetry is not None and hub.rollouts is None
        hub.start()  # HTTP now: rollouts follow
        assert hub.rollouts is not None and hub.rollouts.config.public_url == hub.http_url


def test_rollouts_attached_to_a_hub_configured_without_them_are_stopped_with_it(tmp_path):
    from tandem.cloud_hub.rollouts.attach import attach_rollouts

    hub = Hub(
        HubConfig.from_keys(
            {
                "publishers.trust_on_first_use": True,
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "mqtt.url": UNREACHABLE,
                "rollouts.enabled": False,
            }
        )
    ).start()
    service = attach_rollouts(hub, tick_s=0.2)
    assert hub.rollouts is service
    hub.stop()
    assert hub.rollouts is None and not service._worker.is_alive()
