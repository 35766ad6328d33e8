"""Undo what a failed start wrote: an agent that could not serve leaves its data dir as it found it.

`tandem-agent run` with a model it cannot load used to leave hard_examples.sqlite (and the folders above
it) behind, under a data dir the operator may not even have meant to use.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

__all__ = ["Footprint"]

log = logging.getLogger(__name__)


class _Root:
    """One folder: the highest ancestor that did not exist yet, or the entries it already held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created: Path | None = None
        probe = path
        while not probe.exists() and probe != probe.parent:
            self.created, probe = probe, probe.parent
        self.before: set[str] = set()
        if self.created is None and path.is_dir():
            self.before = {entry.name for entry in path.iterdir()}

    def undo(self) -> None:
        if self.created is not None:
            _remove(self.created)
        elif self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.name not in self.before:
                    _remove(entry)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:  # never hide the start error behind a clean-up error
        log.warning("could not remove %s after a failed start: %s", path, exc)


class Footprint:
    """Take it before a start (`Footprint(dirs)`), `undo()` if the start fails."""

    def __init__(self, *dirs: Path | None) -> None:
        self._roots = [_Root(d) for d in dict.fromkeys(d for d in dirs if d is not None)]

    def undo(self) -> None:
        for root in self._roots:
            root.undo()
