"""The hub's exception hierarchy: each maps to one HTTP status (`status`) and one CLI message.

    HubError                       500  base: every error the hub raises on purpose
    ├── NotFoundError              404  a model, version, device, token or artifact does not exist
    ├── ConflictError              409  contradicts what is stored (an immutable version, a rollout's state)
    ├── InvalidInputError          422  a request or a model directory is malformed
    ├── AuthError                  401  no bearer token, an unknown or revoked one
    ├── ForbiddenError             403  a valid token whose scope does not allow this
    └── ServiceUnavailableError    503  a part of the hub is not running (telemetry, hard examples, rollouts)
        ├── BrokerError            503  the fleet's MQTT broker could not be started
        └── ConfigError            503  a setting is invalid; the message names the key (never a 500: not a bug)

One mapping per boundary: REST (`rest/app.py`: status and {"detail": message}), the CLI (`cli.py`:
the message, exit 1), gRPC (`inference/servicer.py`: KServe status codes).
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises on purpose; `status` is its HTTP code."""

    status: int = 500


class NotFoundError(HubError):
    """A model, version, device, token or artifact does not exist."""

    status = 404


class ConflictError(HubError):
    """The request contradicts what is stored (e.g. an immutable model version)."""

    status = 409


class InvalidInputError(HubError):
    """A request or a model directory is malformed; the message says what to fix."""

    status = 422


class AuthError(HubError):
    """No bearer token, an unknown one, or a revoked one (HTTP 401)."""

    status = 401


class ForbiddenError(HubError):
    """The token is valid but its scope does not allow this (HTTP 403)."""

    status = 403


class ServiceUnavailableError(HubError):
    """A part of the hub is not running (telemetry, hard examples, rollouts); the message says what starts it."""

    status = 503


class BrokerError(ServiceUnavailableError):
    """The fleet's MQTT broker could not be started."""


class ConfigError(ServiceUnavailableError):
    """A hub setting is invalid; the message names the key and the env var. At start-up the CLI prints it; met
    while answering a request it is a 503 (the operator must fix a setting), never a 500."""


__all__ = [
    "AuthError",
    "BrokerError",
    "ConfigError",
    "ConflictError",
    "ForbiddenError",
    "HubError",
    "InvalidInputError",
    "NotFoundError",
    "ServiceUnavailableError",
]
