"""A/B model store on disk: complete model directories in slots, one state file naming them.

Layout under `root`: `state.json` (which slot is active, which is previous, the highest
version ever accepted, an uncommitted trial), `slots/<id>/` (complete model dirs),
`staging/<key>/` (downloads in progress). The state file is the only switch: it is
replaced atomically (write temp, fsync, rename, fsync dir), and a slot is renamed into
`slots/` only after every file in it was fsynced, so a SIGKILL at any moment leaves a
state that names complete directories: the old version or the new one, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tandem.edge_agent.ota.errors import StoreError
from tandem.protocols.manifest import ManifestError, load_manifest, parse_version

log = logging.getLogger(__name__)

STATE_FILENAME = "state.json"
STATE_SCHEMA = 1


@dataclass(frozen=True)
class SlotRef:
    slot: str
    model: str
    version: str


@dataclass(frozen=True)
class StoreState:
    active: SlotRef | None = None
    previous: SlotRef | None = None
    max_accepted: str | None = None  # anti-rollback: never install a version <= this
    trial: dict[str, Any] | None = None  # set between switch and commit: {"rollout_id", "version", "switched_at"}
    health: dict[str, Any] | None = None  # the watch figures the active version was committed on (repeated to
    # a hub that asks again after its own restart: a gate needs data)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": STATE_SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StoreState":
        if data.get("schema") != STATE_SCHEMA:
            raise StoreError(f"state.json: schema {data.get('schema')!r} is not {STATE_SCHEMA}")
        ref = lambda d: SlotRef(**d) if d else None  # noqa: E731
        return cls(
            active=ref(data.get("active")),
            previous=ref(data.get("previous")),
            max_accepted=data.get("max_accepted"),
            trial=data.get("trial"),
            health=data.get("health"),
        )


@dataclass
class Recovery:
    """What `open()` found: garbage removed, and a trial rolled back because the agent died during it."""

    removed: list[str] = field(default_factory=list)
    rolled_back_trial: dict[str, Any] | None = None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename over `path`, fsync the directory: readers see old or new bytes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (bottom-up), then `root` itself."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def _newer(a: str, b: str | None) -> bool:
    return b is None or parse_version(a) > parse_version(b)


class ModelStore:
    """The device's model slots. Not thread-safe: one OTA worker owns it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.slots = self.root / "slots"
        self.staging = self.root / "staging"
        self.state_path = self.root / STATE_FILENAME
        self.state = StoreState()

    # -- start-up -------------------------------------------------------------------

    def open(self) -> Recovery:
        """Read the state and repair after a crash: roll back an unfinished trial, drop unnamed slots."""
        for path in (self.root, self.slots, self.staging):
            path.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob(f".{STATE_FILENAME}.*.tmp"):
            tmp.unlink()
        recovery = Recovery()
        if self.state_path.exists():
            try:
                self.state = StoreState.from_dict(json.loads(self.state_path.read_bytes()))
            except (ValueError, TypeError) as exc:
                raise StoreError(f"{self.state_path}: unreadable ({exc}); restore it or remove the store") from exc
        for ref in (self.state.active, self.state.previous):
            if ref is not None and not (self.slots / ref.slot).is_dir():
                raise StoreError(f"{self.state_path}: names slot {ref.slot!r}, which is missing")
        if self.state.trial is not None:
            # The agent died while a new version was on trial: the trial failed.
            if self.state.previous is not None:
                recovery.rolled_back_trial = dict(self.state.trial)
                log.warning("unfinished trial found version=%s; rolling back", self.state.trial.get("version"))
                self.rollback()
            else:  # a first install has nothing to go back to
                self.commit()
        named = {r.slot for r in (self.state.active, self.state.previous) if r is not None}
        for child in self.slots.iterdir():
            if child.name not in named:
                shutil.rmtree(child, ignore_errors=True)
                recovery.removed.append(child.name)
        return recovery

    # -- what is installed --------------------------------------------------------------

    @property
    def active_dir(self) -> Path | None:
        return self.slots / self.state.active.slot if self.state.active else None

    @property
    def previous_dir(self) -> Path | None:
        return self.slots / self.state.previous.slot if self.state.previous else None

    @property
    def active_version(self) -> str | None:
        return self.state.active.version if self.state.active else None

    @property
    def previous_version(self) -> str | None:
        return self.state.previous.version if self.state.previous else None

    # -- the update steps -----------------------------------------------------------------

    def staging_dir(self, key: str) -> Path:
        """A download area for `key` (kept across restarts so a download resumes); others are dropped."""
        for child in self.staging.iterdir():
            if child.name != key:
                shutil.rmtree(child, ignore_errors=True)
        path = self.staging / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stage(self, staged: Path, version: str) -> str:
        """Make a verified staging dir durable and move it into a new slot; returns the slot id."""
        fsync_tree(staged)
        slot = f"{version}-{secrets.token_hex(4)}"
        os.replace(staged, self.slots / slot)
        fsync_dir(self.slots)
        fsync_dir(self.staging)
        return slot

    def discard(self, slot: str) -> None:
        """Remove a staged slot that is not (and never became) active."""
        if self.state.active and self.state.active.slot == slot:
            raise StoreError(f"slot {slot}: is active; roll back instead")
        shutil.rmtree(self.slots / slot, ignore_errors=True)

    def switch(self, slot: str, rollout_id: str) -> StoreState:
        """Atomically make `slot` active (on trial); the old active becomes previous.

        The anti-rollback floor (`max_accepted`) does not move here: a trial may still be
        rolled back for health, and that version must stay installable (see `commit`).
        """
        try:
            manifest = load_manifest(self.slots / slot)
        except ManifestError as exc:
            raise StoreError(f"slot {slot}: {exc}") from exc
        old_previous = self.state.previous
        new = StoreState(
            active=SlotRef(slot, manifest.name, manifest.version),
            previous=self.state.active,
            max_accepted=self.state.max_accepted,
            trial={"rollout_id": rollout_id, "version": manifest.version, "switched_at": time.time()},
        )
        self._write(new)
        if old_previous is not None:
            shutil.rmtree(self.slots / old_previous.slot, ignore_errors=True)
        return new

    def commit(self, health: dict[str, Any] | None = None) -> StoreState:
        """End the trial: the active version stays, and only now the anti-rollback floor rises to it.

        `health`: the watch figures it was committed on, kept so a repeated command is answered with them.
        """
        active, max_accepted = self.state.active, self.state.max_accepted
        if active is not None and _newer(active.version, max_accepted):
            max_accepted = active.version
        return self._write(StoreState(active, self.state.previous, max_accepted, None, health))

    def rollback(self) -> StoreState:
        """Make the previous version active again; the version rolled back from is removed.

        `max_accepted` is untouched: it only rises on commit, so a version rolled back for
        health (a loaded host, a hub restart) is not banned and an operator can retry it.
        """
        if self.state.previous is None:
            raise StoreError("rollback: no previous version in the store")
        bad = self.state.active
        new = self._write(StoreState(self.state.previous, None, self.state.max_accepted, None))
        if bad is not None:
            shutil.rmtree(self.slots / bad.slot, ignore_errors=True)
        return new

    def install_initial(self, model_dir: str | Path) -> StoreState:
        """Bootstrap: copy a compiled model dir in as the committed active version."""
        model_dir = Path(model_dir)
        try:
            manifest = load_manifest(model_dir)
        except ManifestError as exc:
            raise StoreError(f"{model_dir}: {exc}") from exc
        work = self.staging_dir(f"initial-{manifest.version}")
        shutil.rmtree(work)
        shutil.copytree(model_dir, work)
        slot = self.stage(work, manifest.version)
        old = self.state
        max_accepted = manifest.version if _newer(manifest.version, old.max_accepted) else old.max_accepted
        self._write(StoreState(SlotRef(slot, manifest.name, manifest.version), old.active, max_accepted, None))
        if old.previous is not None:
            shutil.rmtree(self.slots / old.previous.slot, ignore_errors=True)
        return self.state

    def _write(self, state: StoreState) -> StoreState:
        atomic_write(self.state_path, json.dumps(state.to_dict(), indent=1, sort_keys=True).encode("utf-8"))
        self.state = state
        return state
