"""HTTP Range parsing for artifact downloads (RFC 9110 §14), pure and total.

Only one byte range per request is served (what resuming downloaders send); a
header we cannot satisfy exactly is refused with 416 rather than half-honoured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(ValueError):
    """The Range header is malformed, multi-part or outside the file (HTTP 416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str, size: int) -> ByteRange:
    """The byte range `header` asks of a `size`-byte file, or RangeNotSatisfiable."""
    if len(header) > 200:
        raise RangeNotSatisfiable("Range header too long")
    match = _RANGE_RE.match(header)
    if not match:
        raise RangeNotSatisfiable(f"unsupported Range {header!r}: send one range, e.g. 'bytes=1024-'")
    first, last = match.groups()
    if first == "" and last == "":
        raise RangeNotSatisfiable("Range 'bytes=-' names no bytes")
    if first == "":
        suffix = int(last)  # bytes=-N: the last N bytes
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"suffix range of {suffix} bytes on a {size}-byte file")
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at byte {start}, but the file has {size} bytes")
    end = size - 1 if last == "" else int(last)
    if end < start:
        raise RangeNotSatisfiable(f"range end {end} is before its start {start}")
    return ByteRange(start, min(end, size - 1))
