"""The wire contracts' exception tree: everything protocols/ raises when a message, a file or a name breaks one.

    ContractError (ValueError)       base: the input breaks a contract; the message says which rule
    ├── ManifestError                manifest.json: a field missing, mistyped or inconsistent
    ├── NpzFormatError               an .npz/.npy that is not plain numeric arrays (npz.py)
    ├── SignatureError               a signature that does not verify
    │   ├── UnsignedError            no signature where one is required
    │   └── UntrustedKeyError        signed by a key that is not trusted
    ├── OtaMessageError              an OTA command or status message
    ├── ResendDecodeError            a telemetry resend request
    ├── TelemetryDecodeError         a telemetry window (protobuf)
    ├── TensorBlobError              a tensor blob (hard examples)
    ├── TensorCodecError             a tensor on the wire (KServe v2 contents or raw bytes)
    ├── TlsConfigError               TLS files (CA, certificate, key)
    ├── TopicError                   an MQTT topic or device id
    └── ConfigValueError             a config key or value (config_loader.py; each package re-raises its own)

A ContractError is a ValueError, so code that catches ValueError keeps working. Each package maps it at its
boundary: the agent to a bad_request reply, the hub to 422 (or a refused upload), the CLIs to a message.
"""

from __future__ import annotations

__all__ = ["ContractError"]


class ContractError(ValueError):
    """Base of every error protocols/ raises: the input breaks a wire or file contract."""
