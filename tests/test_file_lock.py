"""protocols/file_lock.FileLock in both modes, and the hub's locks built on it (cloud_hub/storage/datadir).

flock locks belong to an open file description, so two FileLock objects in one process contend like
two processes: these tests need no subprocess."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from tandem.cloud_hub.storage.datadir import (
    LOCK_FILENAME,
    DataDirLock,
    DataDirLockedError,
    ReplicaDataDirLock,
)
from tandem.protocols.file_lock import FileLock


def test_an_exclusive_lock_refuses_every_other_taker_and_names_its_pid(tmp_path: Path) -> None:
    first = FileLock(tmp_path / "x.lock")
    assert first.try_acquire() is None and first.held and first.alone
    assert FileLock(tmp_path / "x.lock").try_acquire() == str(os.getpid())
    assert FileLock(tmp_path / "x.lock").try_acquire_shared() == str(os.getpid())
    first.release()
    first.release()  # twice is safe
    assert not first.held
    again = FileLock(tmp_path / "x.lock")
    assert again.try_acquire() is None
    again.release()


def test_sharers_coexist_only_the_first_is_alone_and_an_exclusive_taker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "s.lock"  # the folder is made
    a = FileLock(path, note=" (sharers)")
    b = FileLock(path)
    assert a.try_acquire_shared() is None and a.alone
    assert b.try_acquire_shared() is None and not b.alone
    assert path.read_text() == f"{os.getpid()} (sharers)\n"  # the second sharer did not overwrite the first's pid
    assert FileLock(path).try_acquire() == f"{os.getpid()} (sharers)"
    a.release()
    assert FileLock(path).try_acquire() is not None  # b still shares it
    b.release()
    last = FileLock(path)
    assert last.try_acquire() is None
    last.release()


def test_a_file_nobody_wrote_a_pid_into_names_an_unknown_holder(tmp_path: Path) -> None:
    path = tmp_path / "bare.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert FileLock(path).try_acquire() == "unknown"
    finally:
        os.close(fd)


def test_replicas_share_a_data_dir_a_plain_hub_and_a_replica_refuse_each_other(tmp_path: Path) -> None:
    a = ReplicaDataDirLock(tmp_path, "a").acquire()
    b = ReplicaDataDirLock(tmp_path, "b").acquire()
    assert a.alone and not b.alone and a.held and b.held
    with pytest.raises(DataDirLockedError, match=r"replica 'a' already runs here \(pid \d+\)"):
        ReplicaDataDirLock(tmp_path, "a").acquire()
    with pytest.raises(DataDirLockedError, match=r"another hub \(pid \d+ \(hub replicas: replicas/\)\)"):
        DataDirLock(tmp_path).acquire()
    a.release()
    b.release()
    b.release()
    assert not b.held
    plain = DataDirLock(tmp_path).acquire()
    with pytest.raises(
        DataDirLockedError, match=rf"a hub without \[cluster\] runs on this data dir \(pid {os.getpid()}\)"
    ):
        ReplicaDataDirLock(tmp_path, "c").acquire()
    # the refused replica let go of its own lock: once the plain hub is gone, "c" starts
    plain.release()
    c = ReplicaDataDirLock(tmp_path, "c").acquire()
    assert c.alone and (tmp_path / LOCK_FILENAME).read_text().startswith(f"{os.getpid()} (hub replicas")
    c.release()
