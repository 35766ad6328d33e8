"""The hub's /metrics: inference, telemetry ingestion, devices, rollouts, drift alerts, build and process.

Read at scrape time from the parts that keep the numbers (the inference servicer's
counters and batchers, the ingest stats, SQLite for devices/rollouts/alerts) and
rendered by protocols.prom in text or OpenMetrics. A part that is not running is
simply absent; a part that fails to answer costs its own families, never the scrape.
"""

from __future__ import annotations

import logging
import platform
from importlib import metadata
from typing import Any, Callable

from tandem.protocols.prom import Family, process_families

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def hub_families(hub: Any) -> list[Family]:
    """Every family the hub exports now (in a fixed order, so scrapes diff cleanly)."""
    out = [_build_info()]
    for part in (_inference, _telemetry, _devices, _rollouts, _alerts, _mqtt_identity):
        out += _safely(part, hub)
    return out + process_families()


def _safely(part: Callable[[Any], list[Family]], hub: Any) -> list[Family]:
    try:
        return part(hub)
    except Exception as exc:  # a part mid-restart must not fail the whole scrape
        log.debug("metrics part %s failed: %r", part.__name__, exc)
        return []


def _build_info() -> Family:
    try:
        version = metadata.version("tandem")
    except metadata.PackageNotFoundError:
        version = "0.0.0"
    return Family("tandem_hub_build_info", "gauge", "Always 1; labels carry the hub's versions.").add(
        1, {"version": version, "python": platform.python_version()}
    )


def _inference(hub: Any) -> list[Family]:
    server = getattr(hub, "inference", None) or getattr(hub, "_inference", None)
    servicer = getattr(server, "servicer", None)
    if servicer is None:
        return []
    from tandem.cloud_hub.inference.counters import LATENCY_BUCKETS_S

    requests = Family(
        "tandem_hub_inference_requests_total",
        "counter",
        "v2 inference requests answered (gRPC and REST), by model and outcome code.",
    )
    rows = Family("tandem_hub_inference_rows_total", "counter", "Batch rows answered, by model.")
    latency = Family(
        "tandem_hub_inference_request_duration_seconds",
        "histogram",
        "Time from decoding a request to its encoded answer, by model.",
    )
    queue = Family("tandem_hub_inference_queue_depth", "gauge", "Requests waiting in a model's micro-batcher.")
    batches = Family(
        "tandem_hub_inference_batch_size", "histogram", "Requests per runtime call made by a model's micro-batcher."
    )
    rejected = Family(
        "tandem_hub_inference_queue_rejections_total",
        "counter",
        "Requests refused because a model's queue was full (RESOURCE_EXHAUSTED).",
    )
    counters = servicer.counters.snapshot()
    for name, model in sorted(servicer.models.items()):
        labels = {"model": name, "version": model.version, "variant": model.variant.id}
        c = counters.get(name)
        if c is not None:
            requests.add(c.success, {**labels, "code": "OK"})
            for code, n in sorted(c.errors.items()):
                requests.add(n, {**labels, "code": code})
            rows.add(c.rows, labels)
            latency.histogram(LATENCY_BUCKETS_S, c.bucket_counts, c.latency_sum_s, labels)
        queue.add(model.batcher.queue_depth, labels)
        stats = model.batcher.stats()
        rejected.add(stats.rejected, labels)
        counts = [0] * len(BATCH_SIZE_BUCKETS)
        over = 0
        for size, n in stats.batch_sizes.items():
            index = next((i for i, b in enumerate(BATCH_SIZE_BUCKETS) if size <= b), None)
            if index is None:
                over += n
            else:
                counts[index] += n
        batches.histogram(
            BATCH_SIZE_BUCKETS, counts + [over], float(sum(size * n for size, n in stats.batch_sizes.items())), labels
        )
    stats = servicer.stats()
    fallback = Family(
        "tandem_hub_fallback_requests_total",
        "counter",
        "Inference requests that carried an edge device id (agent fallbacks).",
    ).add(stats.fallback_requests)
    agreement = Family(
        "tandem_hub_edge_agreements_total",
        "counter",
        "Fallback requests whose edge top-1 class matched the hub's, by outcome.",
    )
    agreement.add(stats.edge_agreements, {"agree": "true"}).add(stats.edge_disagreements, {"agree": "false"})
    ready = Family("tandem_hub_inference_ready", "gauge", "1 while the inference service is serving.").add(
        1 if servicer.ready else 0
    )
    return [requests, rows, latency, queue, batches, rejected, fallback, agreement, ready]


def _telemetry(hub: Any) -> list[Family]:
    telemetry = getattr(hub, "telemetry", None)
    if telemetry is None:
        return []
    s = telemetry.ingest.stats
    windows = Family(
        "tandem_hub_telemetry_windows_total", "counter", "Telemetry windows received over MQTT, by what became of them."
    )
    for outcome, n in (
        ("stored", s.stored),
        ("duplicate", s.duplicates),
        ("bad", s.bad),
        ("rate_limited", s.rate_limited),
        ("store_error", s.store_errors),
    ):
        windows.add(n, {"outcome": outcome})
    received = Family(
        "tandem_hub_telemetry_messages_total", "counter", "MQTT telemetry messages received (any outcome)."
    ).add(s.received)
    duplicates = Family(
        "tandem_hub_telemetry_duplicates_total",
        "counter",
        "Windows received again (QoS 1 redelivery, outbox replay) and not stored twice.",
    ).add(s.duplicates)
    out = [windows, received, duplicates]
    row = telemetry.store.db.query(
        "SELECT received_at - end_unix AS lag FROM telemetry_windows ORDER BY received_at DESC LIMIT 1"
    )
    if row:
        out.append(
            Family(
                "tandem_hub_telemetry_ingest_lag_seconds",
                "gauge",
                "For the newest stored window: received at the hub minus the window's end.",
            ).add(max(0.0, float(row[0]["lag"])))
        )
    out.append(
        Family("tandem_hub_telemetry_subscribed", "gauge", "1 while ingestion is subscribed to the broker.").add(
            1 if telemetry.ingest.subscribed else 0
        )
    )
    gaps = getattr(telemetry, "gaps", None)
    if gaps is not None:  # end-to-end delivery (cloud_hub.telemetry.gaps)
        g = gaps.stats()
        missing = Family(
            "tandem_hub_telemetry_missing_windows",
            "gauge",
            "Window sequence numbers the hub has not received: open (being asked for again) or lost "
            "(asked max_asks times, or past what one jump may open).",
        )
        missing.add(g["open"], {"state": "open"}).add(g["lost"], {"state": "lost"})
        out += [
            missing,
            Family(
                "tandem_hub_telemetry_resend_requests_total",
                "counter",
                "Resend requests published to devices since start.",
            ).add(g["resend_requests"]),
        ]
    return out


def _devices(hub: Any) -> list[Family]:
    counts = hub.devices.counts()
    family = Family("tandem_hub_devices", "gauge", "Registered devices, by presence.")
    for status in ("online", "offline"):
        family.add(counts.get(status, 0), {"status": status})
    return [family]


def _rollouts(hub: Any) -> list[Family]:
    rollouts = getattr(hub, "rollouts", None)
    if rollouts is None:
        return []
    rows = rollouts.store.db.query("SELECT status, COUNT(*) AS n FROM rollouts GROUP BY status ORDER BY status")
    family = Family("tandem_hub_rollouts", "gauge", "Rollouts, by state.")
    for row in rows:
        family.add(row["n"], {"state": row["status"]})
    return [family]


def _alerts(hub: Any) -> list[Family]:
    telemetry = getattr(hub, "telemetry", None)
    if telemetry is None:
        return []
    rows = telemetry.store.db.query(
        "SELECT model_name, signal, COUNT(*) AS n FROM drift_alerts WHERE state='open' "
        "GROUP BY model_name, signal ORDER BY model_name, signal"
    )
    family = Family("tandem_hub_drift_alerts_open", "gauge", "Open drift alerts, by model and signal.")
    for row in rows:
        family.add(row["n"], {"model": row["model_name"], "signal": row["signal"]})
    total = Family("tandem_hub_drift_alerts_open_count", "gauge", "Open drift alerts, all models.").add(
        sum(r["n"] for r in rows)
    )
    return [family, total]


def _mqtt_identity(hub: Any) -> list[Family]:
    from tandem.cloud_hub.broker_identity import IdentityRefusals

    watch = next((s for s in getattr(hub, "_services", []) if isinstance(s, IdentityRefusals)), None)
    if watch is None:
        return []
    family = Family(
        "tandem_hub_mqtt_identity_refusals_total",
        "counter",
        "MQTT connections the broker refused because the client id was not the certificate's own, by certificate CN.",
    )
    for cn, count in sorted(watch.counts().items()):
        family.add(count, {"certificate": cn})
    return [family]
