"""One writer per data dir, and the leftovers a killed hub leaves behind.

Two hubs on one data dir would both run rollouts and write the same databases (the issue's
hub B timed out a rollout hub A had completed). `DataDirLock` takes an exclusive flock on
<data_dir>/hub.lock for the hub's whole life; the kernel drops it when the process dies
(even on SIGKILL), so a crashed hub never blocks its own restart. The lock is per host:
replicas on several hosts need a lease (not built here).

`sweep_leftovers` removes what an upload or artifact write killed mid-way left: the
`upload-*` temporary folders and the files in artifacts/tmp. Only a lock holder calls it,
so nothing it removes can belong to a live request.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from tandem.cloud_hub.errors import HubError

log = logging.getLogger(__name__)

LOCK_FILENAME = "hub.lock"
UPLOAD_PREFIX = "upload-"  # cloud_hub.rest.routes_models' temporary upload folders
ARTIFACTS_TMP = ("artifacts", "tmp")


class DataDirLockedError(HubError):
    """Another hub process holds this data dir."""

    status = 409


class DataDirLock:
    """An exclusive, non-blocking flock held until `release` (or the process ends)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> "DataDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLockedError(
                f"{self.path.parent}: another hub (pid {holder}) is using this data dir; stop it first, or give "
                "this hub its own data_dir (two hubs on one dir would both run rollouts and write its databases)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def sweep_leftovers(data_dir: str | Path) -> tuple[int, int]:
    """Remove temporary upload folders and partial artifact files; (entries removed, bytes freed)."""
    root = Path(data_dir)
    victims = [p for p in root.glob(f"{UPLOAD_PREFIX}*") if p.is_dir() and not p.is_symlink()]
    tmp = root.joinpath(*ARTIFACTS_TMP)
    if tmp.is_dir():
        victims += list(tmp.iterdir())
    removed = freed = 0
    for path in victims:
        size = _size(path)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            log.warning("leftover not removed path=%s error=%s", path, exc)
            continue
        removed += 1
        freed += size
    if removed:
        log.warning("swept leftovers of killed uploads data_dir=%s entries=%d bytes=%d", root, removed, freed)
    return removed, freed


def _size(path: Path) -> int:
    try:
        if path.is_file() or path.is_symlink():
            return path.lstat().st_size
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0
