"""Hub telemetry: MQTT ingestion into SQLite, drift statistics and alerting with hysteresis."""

from cloud_hub.telemetry.alerts import AlertState, Hysteresis
from cloud_hub.telemetry.engine import CohortKey, DriftConfig, DriftEngine
from cloud_hub.telemetry.ingest import IngestConfig, TelemetryIngest
from cloud_hub.telemetry.service import TelemetryIngestService, TelemetryServiceConfig
from cloud_hub.telemetry.store import TelemetryStore

__all__ = ["AlertState", "CohortKey", "DriftConfig", "DriftEngine", "Hysteresis", "IngestConfig", "TelemetryIngest",
           "TelemetryIngestService", "TelemetryServiceConfig", "TelemetryStore"]
