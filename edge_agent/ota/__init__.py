"""Signed OTA model updates on the device: A/B store, download, verify, self-test, switch, watch."""

from tandem.edge_agent.ota.errors import DownloadError, OtaError, SelfTestError, StoreError, VerificationError
from tandem.edge_agent.ota.machine import HealthFigures, WatchPolicy, decide_health
from tandem.edge_agent.ota.store import ModelStore

__all__ = [
    "DownloadError",
    "HealthFigures",
    "ModelStore",
    "OtaError",
    "SelfTestError",
    "StoreError",
    "VerificationError",
    "WatchPolicy",
    "decide_health",
]
