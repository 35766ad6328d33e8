"""The telemetry sequence floor: numbers the outbox has reserved, kept in a small file beside it.

The hub stores windows by (device, sequence) and drops a number it holds as a duplicate. An outbox
that starts again from 1 (its file was damaged and moved aside, or deleted) would have every window
it sends dropped until it passes the numbers the old file used. So the outbox reserves sequences in
blocks of RESERVE_BLOCK, writing the block's end here (atomically, fsynced) before it uses one; a new
outbox starts after the floor. A reset skips at most one block: the hub sees the gap, asks for it and
counts what no one can resend as lost, rather than silently taking new windows for old ones.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_BLOCK = 100  # one small fsynced write per 100 windows (~17 min of 10 s windows)


class SequenceFloor:
    """`reserved`: no sequence above it was used; `reserve(seq)` raises it before `seq` is used (OSError on I/O)."""

    def __init__(self, path: str | Path, block: int = RESERVE_BLOCK) -> None:
        if block < 1:
            raise ValueError(f"sequence floor: block must be >= 1, got {block}")
        self.path = Path(path)
        self.block = block
        self.reserved = self._read()

    def _read(self) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("telemetry sequence floor unreadable path=%s error=%s; taken as 0", self.path, exc)
            return 0
        try:
            value = int(text)
            if value < 0:
                raise ValueError(value)
        except ValueError:
            log.warning("telemetry sequence floor damaged path=%s content=%r; taken as 0", self.path, text[:40])
            return 0
        return value

    def reserve(self, seq: int) -> None:
        """Make sure `seq` is at or under the floor on disk: write seq + block - 1 when it is not."""
        if seq <= self.reserved:
            return
        value = seq + self.block - 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{value}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.reserved = value
