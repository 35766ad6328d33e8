"""Hub -> device "resend these telemetry windows" requests: the end-to-end half of delivery.

The broker's PUBACK only says the broker has a window; a broker that dies before saving it,
or drops it past a queue limit, would lose it silently. The hub therefore tracks each
device's sequence numbers and, for a gap that does not fill by itself, asks the device on
its own topic (protocols.topics.telemetry_resend_topic) to send those sequences again from
its replay store. Each request also carries the hub's clock (`hub_time`), from which the
device estimates its clock offset.

JSON, small and bounded: at most MAX_RESEND_SEQUENCES per request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tandem.protocols.errors import ContractError

__all__ = ["MAX_RESEND_BYTES", "MAX_RESEND_SEQUENCES", "ResendDecodeError", "ResendRequest", "decode_resend"]

MAX_RESEND_SEQUENCES = 1000
MAX_RESEND_BYTES = 16 * 1024


class ResendDecodeError(ContractError):
    """A resend request that is not one (malformed, too big, bad sequences)."""


@dataclass(frozen=True)
class ResendRequest:
    sequences: tuple[int, ...]
    hub_time: float

    def encode(self) -> bytes:
        if len(self.sequences) > MAX_RESEND_SEQUENCES:
            raise ResendDecodeError(f"resend: {len(self.sequences)} sequences, the limit is {MAX_RESEND_SEQUENCES}")
        return json.dumps(
            {"sequences": list(self.sequences), "hub_time": self.hub_time}, separators=(",", ":")
        ).encode()


def decode_resend(payload: bytes) -> ResendRequest:
    if len(payload) > MAX_RESEND_BYTES:
        raise ResendDecodeError(f"resend: {len(payload)} bytes, the limit is {MAX_RESEND_BYTES}")
    try:
        doc = json.loads(payload)
        seqs, hub_time = doc["sequences"], float(doc["hub_time"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ResendDecodeError(f"resend: not a request ({exc})") from None
    if (
        not isinstance(seqs, list)
        or len(seqs) > MAX_RESEND_SEQUENCES
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in seqs)
    ):
        raise ResendDecodeError(f"resend: sequences must be a list of at most {MAX_RESEND_SEQUENCES} integers >= 1")
    return ResendRequest(tuple(seqs), hub_time)
