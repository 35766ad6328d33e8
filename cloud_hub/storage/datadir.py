"""One writer per data dir, and the leftovers a killed hub leaves behind.

Two hubs on one data dir would both run rollouts and write the same databases (the issue's
hub B timed out a rollout hub A had completed). `DataDirLock` takes an exclusive flock on
<data_dir>/hub.lock for the hub's whole life; the kernel drops it when the process dies
(even on SIGKILL), so a crashed hub never blocks its own restart. Hub replicas ([cluster]) share
one data dir instead: each holds hub.lock SHARED plus an exclusive lock of its own
(`ReplicaDataDirLock`, replicas/<replica_id>.lock), so replicas coexist while a plain hub and a
replica still refuse each other. The singletons among replicas move with a lease in the
database (cloud_hub/cluster), not with these locks: flock is per host (and NFS-dependent).

`sweep_leftovers` removes what an upload or artifact write killed mid-way left: the
`upload-*` temporary folders and the files in artifacts/tmp. Only a process alone on the dir
calls it (a plain hub, or a replica that found no other), so nothing it removes can belong to a
live request.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tandem.cloud_hub.errors import HubError
from tandem.protocols.file_lock import FileLock

log = logging.getLogger(__name__)

LOCK_FILENAME = "hub.lock"
REPLICAS_DIR = "replicas"  # one <replica_id>.lock per running replica
UPLOAD_PREFIX = "upload-"  # cloud_hub.rest.routes_models' temporary upload folders
ARTIFACTS_TMP = ("artifacts", "tmp")


class DataDirLockedError(HubError):
    """Another hub process holds this data dir."""

    status = 409


class DataDirLock(FileLock):
    """The hub's data-dir lock (protocols/file_lock.py), held until `release` or the process ends."""

    def __init__(self, data_dir: str | Path) -> None:
        super().__init__(Path(data_dir) / LOCK_FILENAME, 0o644)

    def acquire(self) -> "DataDirLock":
        holder = self.try_acquire()
        if holder is not None:
            raise DataDirLockedError(
                f"{self.path.parent}: another hub (pid {holder}) is using this data dir; stop it first, or give "
                "this hub its own data_dir (two hubs on one dir would both run rollouts and write its databases); "
                "several hubs on one dir run as replicas: [cluster] enabled on every one (--cluster)"
            )
        return self


class ReplicaDataDirLock:
    """A replica's hold on a shared data dir: hub.lock shared, replicas/<replica_id>.lock exclusive.

    `alone` says whether no other hub process held the dir when this one came (then it may sweep
    leftovers). `release` drops both; the kernel drops them when the process dies."""

    def __init__(self, data_dir: str | Path, replica_id: str) -> None:
        self.data_dir = Path(data_dir)
        self.replica_id = replica_id
        self._own = FileLock(self.data_dir / REPLICAS_DIR / f"{replica_id}.lock", 0o644)
        # The note is what a plain hub refused later names.
        self._shared = FileLock(self.data_dir / LOCK_FILENAME, 0o644, note=f" (hub replicas: {REPLICAS_DIR}/)")

    @property
    def alone(self) -> bool:
        return self._shared.alone

    def acquire(self) -> "ReplicaDataDirLock":
        holder = self._own.try_acquire()
        if holder is not None:
            raise DataDirLockedError(
                f"{self.data_dir}: hub replica {self.replica_id!r} already runs here (pid {holder}); give this one "
                "another cluster.replica_id (--replica-id), or leave it unset for <hostname>-<pid>"
            )
        try:
            holder = self._shared.try_acquire_shared()
        except BaseException:
            self._own.release()
            raise
        if holder is not None:
            self._own.release()
            raise DataDirLockedError(
                f"{self.data_dir}: a hub without [cluster] runs on this data dir (pid {holder}); stop it, "
                "then start every hub on this dir as a replica (cluster.enabled, --cluster)"
            )
        return self

    @property
    def held(self) -> bool:
        return self._shared.held

    def release(self) -> None:
        """Drop both locks; safe to call twice."""
        try:
            self._shared.release()
        finally:
            self._own.release()


def lock_data_dir(data_dir: str | Path, replica_id: str | None) -> DataDirLock | ReplicaDataDirLock:
    """The hub's hold on its data dir (a plain hub: alone; a replica: beside other replicas), after sweeping
    the leftovers of killed uploads when no other hub process is on the dir."""
    lock: DataDirLock | ReplicaDataDirLock
    if replica_id is None:
        lock = DataDirLock(data_dir).acquire()
        alone = True
    else:
        lock = ReplicaDataDirLock(data_dir, replica_id).acquire()
        alone = lock.alone
    if alone:
        try:
            sweep_leftovers(data_dir)
        except BaseException:
            lock.release()
            raise
    return lock


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
