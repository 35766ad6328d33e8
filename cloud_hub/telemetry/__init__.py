"""Hub telemetry: MQTT ingestion into SQLite, drift statistics and alerting with hysteresis."""

from tandem.cloud_hub.telemetry.alerts import AlertState, Hysteresis
from tandem.cloud_hub.telemetry.engine import CohortKey, DriftConfig, DriftEngine
from tandem.cloud_hub.telemetry.ingest import IngestConfig, TelemetryIngest
from tandem.cloud_hub.telemetry.service import TelemetryIngestService, TelemetryServiceConfig
from tandem.cloud_hub.telemetry.store import TelemetryStore

__all__ = [
    "AlertState",
    "CohortKey",
    "DriftConfig",
    "DriftEngine",
    "Hysteresis",
    "IngestConfig",
    "TelemetryIngest",
    "TelemetryIngestService",
    "TelemetryServiceConfig",
    "TelemetryStore",
]
