"""The OTA client's exceptions; each message names the file, field or step that failed."""

from __future__ import annotations

from tandem.edge_agent.errors import AgentError


class OtaError(AgentError):
    """Base of every OTA failure; the update is abandoned and the active model kept."""

    code = "ota"


class VerificationError(OtaError):
    """Signature, hash, size, profile, expiry or version check failed, e.g. 'variants/x/model.onnx: sha256 mismatch'."""

    code = "ota_verification"


class DownloadError(OtaError):
    """A manifest or file could not be fetched within the retry and size bounds."""

    code = "ota_download"


class SelfTestError(OtaError):
    """The staged variant did not reproduce the manifest's golden outputs."""

    code = "ota_self_test"


class SelfTestHarnessError(OtaError):
    """The self-test could not run (e.g. reading its golden file raised an internal error): no verdict on the variant.

    The updater retries it a few times; only then does the install fail, reported as a self-test error rather
    than as a variant that missed its golden outputs.
    """

    code = "ota_self_test_error"


class StoreError(OtaError):
    """The on-disk A/B model store is unusable (unreadable state file, missing slot)."""

    code = "ota_store"
