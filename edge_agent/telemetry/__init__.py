"""Agent telemetry: windows of answered requests, kept on disk until the broker has them."""

from tandem.edge_agent.telemetry.outbox import Outbox, OutboxError
from tandem.edge_agent.telemetry.publisher import PublisherConfig, TelemetryPublisher
from tandem.edge_agent.telemetry.service import TelemetryService
from tandem.edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig

__all__ = [
    "ModelInfo",
    "Outbox",
    "OutboxError",
    "PublisherConfig",
    "TelemetryPublisher",
    "TelemetryService",
    "WindowAggregator",
    "WindowConfig",
]
