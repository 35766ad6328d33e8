"""The hub's data dir is private whatever the umask: folders 0700, files 0600.

Token hashes, raw device inputs, keys and the broker's config live there; a umask of 000
must not make any of them readable or writable by other users (a root Mosquitto reads
its config from here).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


def private_tree(root: Path) -> None:
    """chmod every folder under `root` (itself included) 0700 and every file 0600; links are left alone."""
    root = Path(root)
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root):
        _chmod(Path(folder), 0o700)
        for name in files:
            _chmod(Path(folder) / name, 0o600)


def _chmod(path: Path, mode: int) -> None:
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == mode:
            return
        os.chmod(path, mode)
    except FileNotFoundError:
        return  # removed meanwhile (an upload's temp folder)
    except OSError as exc:
        log.warning("cannot make private path=%s reason=%s", path, exc)
