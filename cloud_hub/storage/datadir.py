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

import logging
import shutil
from pathlib import Path

from tandem.cloud_hub.errors import HubError
from tandem.protocols.file_lock import ExclusiveFileLock

log = logging.getLogger(__name__)

LOCK_FILENAME = "hub.lock"
UPLOAD_PREFIX = "upload-"  # cloud_hub.rest.routes_models' temporary upload folders
ARTIFACTS_TMP = ("artifacts", "tmp")


class DataDirLockedError(HubError):
    """Another hub process holds this data dir."""

    status = 409


class DataDirLock(ExclusiveFileLock):
    """The hub's data-dir lock (protocols/file_lock.py), held until `release` or the process ends."""

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(Path(data_dir) / LOCK_FILENAME, 0o644)

    def acquire(self) -> "DataDirLock":
        holder = self.try_acquire()
        if holder is not None:
            raise DataDirLockedError(
                f"{self.path.parent}: another hub (pid {holder}) is using this data dir; stop it first, or give "
                "this hub its own data_dir (two hubs on one dir would both run rollouts and write its databases)"
            )
        return self


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
