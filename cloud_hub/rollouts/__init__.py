"""Staged OTA rollouts: a pure controller, its SQLite store, the MQTT shell, REST routes."""

from tandem.cloud_hub.rollouts.controller import GatePolicy, Rollout, RolloutError
from tandem.cloud_hub.rollouts.service import RolloutService, RolloutServiceConfig
from tandem.cloud_hub.rollouts.store import RolloutStore

__all__ = ["GatePolicy", "Rollout", "RolloutError", "RolloutService", "RolloutServiceConfig", "RolloutStore"]
