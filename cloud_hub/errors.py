"""The hub's exception hierarchy: each maps to one HTTP status and one CLI message."""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises on purpose; `status` is its HTTP code."""

    status: int = 500


class ConfigError(HubError):
    """A hub setting is invalid; the message names the key and the env var."""

    status = 500


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


class BrokerError(HubError):
    """The fleet's MQTT broker could not be started."""

    status = 503
