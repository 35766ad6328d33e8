"""A device's per-window series past raw retention: REST /v1/telemetry/devices/{id} switches to the device's
minute rollups (and says so in `source`), the console's chart series fills the range raw retention no longer
holds with minute points and keeps the raw windows after the seam, each window in exactly one point."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tandem.cloud_hub.errors import NotFoundError
from tandem.cloud_hub.telemetry.retention import RetentionPolicy, TelemetryRetention
from tandem.cloud_hub.telemetry.store import StoredWindow, TelemetryStore
from tandem.protocols import limits
from tandem.protocols.telemetry_codec import TelemetryWindow, encode_window

T0 = 1_800_000_000.0  # a round hour
COHORT = '{"profile": "cpu-x86", "tags": {}}'


def windows(n: int, rng: np.random.Generator) -> list[StoredWindow]:
    """One device, a window every 10 s from T0 (received 3 s after each 10 s mark)."""
    out = []
    for k in range(n):
        w = TelemetryWindow(
            schema_version=limits.TELEMETRY_SCHEMA_VERSION,
            device_id="dev-1",
            sequence=k + 1,
            model_name="toy",
            model_version="1.0.0",
            profile="cpu-x86",
            start_unix=T0 + 10.0 * k - 7.0,
            end_unix=T0 + 10.0 * k + 3.0,
        )
        w.requests.edge, w.requests.cloud = int(rng.integers(5, 20)), int(rng.integers(0, 4))
        w.latency_sum_ms = float(rng.uniform(10, 50))
        w.latency_counts.extend(int(v) for v in rng.integers(0, 3, 13))
        w.confidence_counts.extend(int(v) for v in rng.multinomial(w.requests.edge + w.requests.cloud, [0.05] * 20))
        out.append(StoredWindow(w, encode_window(w), COHORT, T0 + 10.0 * k + 3.0))
    return out


@pytest.fixture
def served(database_target) -> Iterator[dict[str, Any]]:
    from tandem.cloud_hub.rest.deps import get_hub
    from tandem.cloud_hub.telemetry import routes
    from tandem.cloud_hub.web import routes as web

    store = TelemetryStore.open(database_target)
    items = windows(180, np.random.default_rng(3))  # 30 minutes
    store.insert_windows(items)
    retention = TelemetryRetention(store, RetentionPolicy(raw_retention_s=300.0, settle_s=30.0))
    app = FastAPI()
    app.state.telemetry = SimpleNamespace(store=store, rollups=retention.rollups, gaps=None)

    def no_manifest(*_: Any) -> Any:
        raise NotFoundError("no manifest")

    app.dependency_overrides[routes.router.dependencies[0].dependency] = lambda: None
    app.dependency_overrides[web.router.dependencies[0].dependency] = lambda: None
    app.dependency_overrides[get_hub] = lambda: SimpleNamespace(registry=SimpleNamespace(manifest=no_manifest))
    app.include_router(routes.router)
    app.include_router(web.router)
    yield {"client": TestClient(app), "items": items, "retention": retention, "store": store}
    store.close()


def test_rest_device_series_switches_to_minute_rollups_once_raw_windows_are_gone(served) -> None:
    client, items = served["client"], served["items"]
    before = client.get("/v1/telemetry/devices/dev-1", params={"limit": 1000}).json()
    assert before["source"] == "raw" and len(before["items"]) == 180
    served["retention"].run_once(T0 + 1800.0)  # raw older than T0+1500 gone
    after = client.get("/v1/telemetry/devices/dev-1", params={"limit": 1000}).json()
    assert after["source"] == "rollups" and after["items"] == []
    rolled = after["rollups"]
    assert [r["bucket"] for r in rolled] == [T0 + 60 * m for m in range(30)]  # every minute, cursor at T0+1763
    assert sum(r["windows"] for r in rolled) == sum(1 for it in items if it.received_at < T0 + 1770)
    assert sum(r["edge"] for r in rolled) == sum(it.window.requests.edge for it in items if it.received_at < T0 + 1770)
    assert sum(sum(r["confidence_counts"]) for r in rolled) > 0
    recent = client.get("/v1/telemetry/devices/dev-1", params={"since": T0 + 1600}).json()
    assert recent["source"] == "raw" and recent["items"]
    forced = client.get("/v1/telemetry/devices/dev-1", params={"source": "raw"}).json()
    assert forced["source"] == "raw" and 0 < len(forced["items"]) < 180


def test_console_series_fills_the_range_raw_retention_dropped_with_minute_points(served) -> None:
    client, items = served["client"], served["items"]
    before = client.get("/v1/console/devices/dev-1/series", params={"limit": 300}).json()
    assert before["source"] == "raw" and len(before["points"]) == 180
    served["retention"].run_once(T0 + 1800.0)
    after = client.get("/v1/console/devices/dev-1/series", params={"limit": 300}).json()
    assert after["source"] == "rollups"
    minutes = [p for p in after["points"] if p["sequence"] is None]
    raw = [p for p in after["points"] if p["sequence"] is not None]
    assert minutes and raw and all(p["bucket_s"] == 60 for p in minutes)
    seam = minutes[-1]["end_unix"]
    assert seam == T0 + 1500.0 and after["points"] == minutes + raw  # oldest first: minutes, then windows
    assert min(p["end_unix"] for p in raw) >= seam  # every window in exactly one point
    assert sum(p["requests"] for p in after["points"]) == sum(
        it.window.requests.edge + it.window.requests.cloud for it in items
    )
    fewer = client.get("/v1/console/devices/dev-1/series", params={"limit": 40}).json()["points"]
    assert len(fewer) == 40 and fewer[-len(raw) :] == raw  # the newest points: raw windows and the latest minutes
