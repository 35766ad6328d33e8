"""Tandem cloud hub: registry, devices, auth, REST console, MQTT broker and gRPC inference.

Public names are loaded lazily so `cloud_hub.inference` can be imported without the
REST and storage stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Hub", "HubConfig", "HubError"]


def __getattr__(name: str) -> Any:
    if name == "Hub":
        from tandem.cloud_hub.hub import Hub

        return Hub
    if name == "HubConfig":
        from tandem.cloud_hub.config import HubConfig

        return HubConfig
    if name == "HubError":
        from tandem.cloud_hub.errors import HubError

        return HubError
    raise AttributeError(f"module 'cloud_hub' has no attribute {name!r}")
