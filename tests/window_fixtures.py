"""Telemetry windows as the hub stores them (`StoredWindow`), for the store, backend and replica tests."""

from __future__ import annotations

from tandem.cloud_hub.telemetry.store import StoredWindow
from tandem.protocols import limits
from tandem.protocols.telemetry_codec import TelemetryWindow, encode_window


def stored_window(device: str, seq: int, received_at: float, edge: int = 3) -> StoredWindow:
    """Window `seq` of model toy 1.0.0 from `device`: one second ending at `received_at`, `edge` requests
    answered on the edge, no cohort."""
    w = TelemetryWindow(
        schema_version=limits.TELEMETRY_SCHEMA_VERSION,
        device_id=device,
        sequence=seq,
        model_name="toy",
        model_version="1.0.0",
        start_unix=received_at - 1.0,
        end_unix=received_at,
    )
    w.requests.edge = edge
    return StoredWindow(w, encode_window(w), "{}", received_at)
