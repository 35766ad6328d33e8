"""Readable tables and timestamps for `tandem-hub` output (JSON output bypasses this)."""

from __future__ import annotations

import time
from typing import Any, Sequence


def ago(timestamp: float | None, now: float | None = None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago'; '-' when unknown."""
    if timestamp is None:
        return "-"
    delta = max(0.0, (now if now is not None else time.time()) - timestamp)
    for unit, seconds in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= seconds:
            return f"{int(delta // seconds)}{unit} ago"
    return f"{int(delta)}s ago"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Left-aligned columns (key, header); None prints as '-'."""
    cells = [[("-" if row.get(key) is None else str(row.get(key))) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
