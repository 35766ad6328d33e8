"""The edge agent's exceptions; each carries a message a device operator can act on.

Errors that cross the local API carry a stable `code` so a client can turn an error
reply back into the same exception type.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class for every error the edge agent raises."""

    code = "internal"


class BadRequestError(AgentError):
    """A request was malformed (shape, dtype, NaN, size, unknown model...); the message says what."""

    code = "bad_request"


class FallbackUnavailable(AgentError):
    """The hub could not answer in time (down, deadline passed, breaker open)."""

    code = "fallback_unavailable"


class ModelLoadError(AgentError):
    """A compiled model directory cannot be loaded (manifest, hashes, runtime, I/O specs)."""

    code = "model_load"


class UntrustedModelError(ModelLoadError):
    """A model folder's manifest is unsigned, signed by no trusted key, or altered after signing (edge_agent/trust.py)."""

    code = "model_untrusted"


class InferenceError(AgentError):
    """The runtime failed on a request that passed validation; the message carries the runtime's reason."""

    code = "inference"


class NonFiniteOutputError(InferenceError):
    """The model answered NaN or infinity: an error, never a label with a NaN confidence."""

    code = "non_finite_output"


class ConfigError(AgentError):
    """The agent configuration is invalid; the message names the key."""

    code = "config"


class OverloadedError(AgentError):
    """The agent's queue is full; retry later or slow down."""

    code = "overloaded"


class AgentUnavailable(AgentError):
    """The client could not reach the agent (not running, wrong endpoint, timeout)."""

    code = "unavailable"


ERRORS_BY_CODE: dict[str, type[AgentError]] = {
    cls.code: cls
    for cls in (
        AgentError,
        BadRequestError,
        FallbackUnavailable,
        ModelLoadError,
        UntrustedModelError,
        InferenceError,
        NonFiniteOutputError,
        ConfigError,
        OverloadedError,
        AgentUnavailable,
    )
}

__all__ = [
    "AgentError",
    "AgentUnavailable",
    "BadRequestError",
    "ConfigError",
    "ERRORS_BY_CODE",
    "FallbackUnavailable",
    "InferenceError",
    "ModelLoadError",
    "NonFiniteOutputError",
    "OverloadedError",
    "UntrustedModelError",
]
