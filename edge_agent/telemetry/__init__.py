"""Agent telemetry: windows of answered requests, kept on disk until the broker has them."""

from edge_agent.telemetry.outbox import Outbox, OutboxError
from edge_agent.telemetry.publisher import PublisherConfig, TelemetryPublisher
from edge_agent.telemetry.service import TelemetryService
from edge_agent.telemetry.window import ModelInfo, WindowAggregator, WindowConfig

__all__ = ["ModelInfo", "Outbox", "OutboxError", "PublisherConfig", "TelemetryPublisher", "TelemetryService",
           "WindowAggregator", "WindowConfig"]
