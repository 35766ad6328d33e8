"""The edge agent's exceptions; each carries a message a device operator can act on.

    AgentError                    internal              base: every error the agent raises on purpose
    ├── BadRequestError           bad_request           a malformed request (shape, dtype, NaN, size...)
    │   └── ShapeNotServedError   shape_not_served      no static shape bucket takes this input shape
    ├── FallbackUnavailable       fallback_unavailable  the hub could not answer in time
    ├── ModelLoadError            model_load            a model folder cannot be loaded (CLI exit 2)
    │   └── UntrustedModelError   model_untrusted       unsigned, untrusted or altered manifest
    ├── InferenceError            inference             the runtime failed on a valid request
    │   └── NonFiniteOutputError  non_finite_output     the model answered NaN or infinity
    ├── ConfigError               config                a setting is invalid; names section.key (CLI exit 2)
    ├── DataFileError             data_file             a data-dir file is damaged; names it and the way out (exit 2)
    ├── OverloadedError           overloaded            the queue is full; retry later
    ├── AgentUnavailable          unavailable           (client side) the agent cannot be reached
    └── OtaError                  ota                   edge_agent/ota/errors.py: an update is abandoned
        ├── VerificationError     ota_verification      signature, hash, size, profile, expiry, version
        ├── DownloadError         ota_download          a manifest or file could not be fetched
        ├── SelfTestError         ota_self_test         the staged variant missed its golden outputs
        └── StoreError            ota_store             the A/B model store is unusable

One mapping per boundary, here: the local API sends `code` (`reply_code`, any exception) and the
client raises `ERRORS_BY_CODE[code]`, the same type; the CLI exits `exit_code(exc)`.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class for every error the edge agent raises."""

    code = "internal"
    request_id = ""  # the failed request's id once its header was read, so the error reply still matches


class BadRequestError(AgentError):
    """A request was malformed (shape, dtype, NaN, size, unknown model...); the message says what."""

    code = "bad_request"


class ShapeNotServedError(BadRequestError):
    """An input shape no static shape bucket of the served variant takes; the message lists the buckets."""

    code = "shape_not_served"


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


class DataFileError(AgentError):
    """A file in the agent's data dir (telemetry outbox, hard-example queue) cannot be opened: damaged,
    truncated, not SQLite. The message names the file and what to do; the file is never deleted for the user."""

    code = "data_file"


def is_damaged_database(exc: BaseException) -> bool:
    """An sqlite3 error that says the file itself is bad (SQLITE_CORRUPT*, SQLITE_NOTADB), not a full disk,
    a lock or a permission, which pass and are retried or reported as they are."""
    return str(getattr(exc, "sqlite_errorname", "")).startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


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
        ShapeNotServedError,
        FallbackUnavailable,
        ModelLoadError,
        UntrustedModelError,
        InferenceError,
        NonFiniteOutputError,
        ConfigError,
        DataFileError,
        OverloadedError,
        AgentUnavailable,
    )
}

EXIT_CODES = {"config": 2, "model_load": 2, "data_file": 2}  # the agent cannot start as configured; anything else: 1


def exit_code(exc: AgentError) -> int:
    """The `tandem-agent` exit status for an error: 2 when the agent cannot start as configured, else 1."""
    return EXIT_CODES.get(exc.code, 1)


def reply_code(exc: BaseException) -> tuple[str, str]:
    """(code, message) for an error reply on the local API: an AgentError's own code, anything else is a bug
    of ours and says so as "internal" (the client raises AgentError)."""
    if isinstance(exc, AgentError):
        return exc.code, str(exc)
    return "internal", f"internal error: {type(exc).__name__}: {exc}"


__all__ = [
    "AgentError",
    "AgentUnavailable",
    "BadRequestError",
    "ConfigError",
    "DataFileError",
    "ShapeNotServedError",
    "ERRORS_BY_CODE",
    "EXIT_CODES",
    "FallbackUnavailable",
    "InferenceError",
    "ModelLoadError",
    "NonFiniteOutputError",
    "OverloadedError",
    "UntrustedModelError",
    "exit_code",
    "is_damaged_database",
    "reply_code",
]
