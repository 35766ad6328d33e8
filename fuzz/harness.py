"""One entry point per decoder that faces the network, and the one error type each may raise.

tests/test_hostile_inputs.py and the atheris targets (fuzz/fuzz_*.py) drive the same
functions: a decoder may accept a message or raise its own error type (listed in
`EXPECTED`); any other exception is a bug that could take a daemon down.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python fuzz/fuzz_wire.py` from a checkout
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from tandem.edge_agent.errors import BadRequestError  # noqa: E402
from tandem.protocols import inference_pb2 as pb  # noqa: E402
from tandem.protocols.ota import OtaMessageError  # noqa: E402
from tandem.protocols.ota import decode_command as _decode_command  # noqa: E402
from tandem.protocols.ota import decode_status as _decode_ota_status  # noqa: E402
from tandem.protocols.telemetry_codec import TelemetryDecodeError, decode_hard_example, decode_status, decode_window  # noqa: E402
from tandem.protocols.tensor_codec import TensorCodecError, decode_request_inputs  # noqa: E402
from tandem.edge_agent.wire import decode_request  # noqa: E402

# A fixed key: commands signed by anyone else must be refused, so fuzzed ones always are
# unless the fuzzer forges ed25519 (it won't).
HUB_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TRUSTED = HUB_KEY.public_key()


def split_frames(data: bytes) -> list[bytes]:
    """Bytes -> frames (u16 big-endian length prefix each): how a fuzzer spells a multipart message."""
    frames, i = [], 0
    while i + 2 <= len(data) and len(frames) < 64:
        (n,) = struct.unpack_from(">H", data, i)
        i += 2
        frames.append(data[i : i + n])
        i += n
    return frames or [data]


def join_frames(frames: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack(">H", len(f)) + bytes(f) for f in frames)


def wire(frames: Sequence[bytes]) -> None:
    """The agent's ZeroMQ request decoder (edge_agent.wire)."""
    decode_request(frames)


def telemetry(payload: bytes) -> None:
    """The hub's telemetry window decoder (device id checked against the topic's)."""
    decode_window(payload, topic_device="dev-1")


def telemetry_status(payload: bytes) -> None:
    """The retained /status payload decoder (hub presence and rollouts read it)."""
    decode_status(payload)


def hard_example(payload: bytes) -> None:
    """A device's hard-example upload: JSON header line, then the tensors blob."""
    decode_hard_example(payload)


def ota_command_signed(payload: bytes) -> None:
    """`payload` as a JSON object signed by the trusted key: what's left to check is the schema."""
    import json

    from tandem.protocols.signing import sign_manifest

    try:
        body = json.loads(payload)
        signed = json.dumps(sign_manifest(body, HUB_KEY)).encode() if isinstance(body, dict) else payload
    except Exception:  # not a JSON object we can sign: send the bytes unsigned
        signed = payload
    _decode_command(signed, TRUSTED, now=0.0)


def ota_command(payload: bytes) -> None:
    """The device's OTA command decoder (signature, schema, deadline)."""
    _decode_command(payload, TRUSTED, now=0.0)


def ota_status(payload: bytes) -> None:
    """The hub's OTA status decoder."""
    _decode_ota_status(payload, "dev-1")


def model_infer(payload: bytes) -> None:
    """v2 ModelInferRequest bytes -> tensors, as the hub's servicer decodes them.

    protobuf's own parse failure is what gRPC answers INTERNAL for before our code runs;
    it is mapped to TensorCodecError here so only our validation is under test.
    """
    from google.protobuf.message import DecodeError

    try:
        request = pb.ModelInferRequest.FromString(payload)
    except DecodeError as exc:
        raise TensorCodecError(f"not a ModelInferRequest: {exc}") from exc
    decode_request_inputs(request)


DECODERS: dict[str, Callable[..., None]] = {
    "wire": wire,
    "telemetry": telemetry,
    "telemetry_status": telemetry_status,
    "ota_command": ota_command,
    "ota_command_signed": ota_command_signed,
    "ota_status": ota_status,
    "model_infer": model_infer,
    "hard_example": hard_example,
}
EXPECTED: dict[str, tuple[type[BaseException], ...]] = {
    "wire": (BadRequestError,),
    "telemetry": (TelemetryDecodeError,),
    "telemetry_status": (TelemetryDecodeError,),
    "ota_command": (OtaMessageError,),
    "ota_command_signed": (OtaMessageError,),
    "ota_status": (OtaMessageError,),
    "model_infer": (TensorCodecError,),
    "hard_example": (TelemetryDecodeError,),
}


def run_one(name: str, message: object) -> str:
    """'ok' or 'refused'; any exception outside EXPECTED[name] propagates (a bug)."""
    try:
        DECODERS[name](message)
    except EXPECTED[name]:
        return "refused"
    return "ok"


MULTIPART = frozenset({"wire"})  # decoders that take ZeroMQ frames, spelled in bytes by split_frames


def run_bytes(name: str, data: bytes) -> str:
    """run_one for a fuzzer's raw bytes: multipart decoders get them split into frames first."""
    return run_one(name, split_frames(data) if name in MULTIPART else data)
