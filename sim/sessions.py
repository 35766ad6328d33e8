"""Loaded model sessions shared by the whole fleet: one session (and one micro-batcher) per variant file.

Virtual devices that run the same variant (same sha256, wherever their copy lives)
share one runtime session behind the agent's own MicroBatcher, so requests from many
devices batch together and a thousand devices cost a handful of sessions. Each
session's host per-row latency is measured once at load; devices scale it by their
profile's speed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.edge_agent.model import LoadedModel, choose_variant, load_model
from tandem.hardware_profiles import Profile
from tandem.hardware_profiles.runtimes.batching import MicroBatcher
from tandem.protocols.manifest import Manifest, Variant, load_manifest
from tandem.sim.emulation import check_fits

log = logging.getLogger(__name__)

CALIBRATION_RUNS = 30


@dataclass
class SharedSession:
    """One loaded variant: its batcher, and what one row costs on this host (median of batch-1 runs)."""

    model: LoadedModel
    batcher: MicroBatcher
    host_ms_per_row: float
    users: int = 0

    @property
    def input_name(self) -> str:
        return self.model.variant.inputs[0].name


@dataclass(frozen=True)
class ModelHandle:
    """What a device holds: the manifest and variant of its own copy, and the shared session."""

    manifest: Manifest
    variant: Variant
    model_dir: Path
    shared: SharedSession

    @property
    def version(self) -> str:
        return self.manifest.version

    def run(self, x: np.ndarray, timeout_s: float = 10.0) -> np.ndarray:
        """The first output for inputs x (through the shared batcher)."""
        feeds = self.shared.model.runtime_feeds({self.shared.input_name: x})
        return self.shared.batcher.run(feeds, timeout=timeout_s)[0]


class SessionPool:
    """Thread-safe cache of SharedSessions keyed by variant content."""

    def __init__(self, max_batch: int = 64, window_ms: float = 1.0, max_queue: int = 4096) -> None:
        self.max_batch = max_batch
        self.window_ms = window_ms
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str, str], SharedSession] = {}

    def open(self, model_dir: str | Path, profile: Profile) -> ModelHandle:
        """The variant of `model_dir` for `profile`; raises ModelRefused if it does not fit, ModelLoadError if broken."""
        model_dir = Path(model_dir)
        manifest = load_manifest(model_dir)
        variant = choose_variant(manifest, profile.name)
        check_fits(sum(f.size for f in variant.files), profile)
        key = (
            variant.model_file.sha256,
            variant.runtime,
            json.dumps(variant.options.get("session", {}), sort_keys=True),
        )
        with self._lock:
            shared = self._sessions.get(key)
            if shared is None:
                shared = self._load(model_dir, profile, variant)
                self._sessions[key] = shared
            shared.users += 1
        return ModelHandle(manifest, variant, model_dir, shared)

    def _load(self, model_dir: Path, profile: Profile, variant: Variant) -> SharedSession:
        model = load_model(model_dir, profile.name, variant.id, threads=1)
        spec = variant.inputs[0]
        shape = [1 if d == -1 else d for d in spec.shape]
        x = np.zeros(shape, dtype=np.dtype(spec.dtype))
        feeds = model.runtime_feeds({spec.name: x})
        times = []
        for _ in range(CALIBRATION_RUNS):
            t0 = time.perf_counter()
            model.session.run(feeds)
            times.append((time.perf_counter() - t0) * 1000.0)
        host_ms = float(np.median(times))
        max_batch = self.max_batch
        if profile.constraints.max_batch:
            max_batch = min(max_batch, profile.constraints.max_batch)
        batcher = MicroBatcher(
            model.session,
            max_batch=max_batch,
            window_ms=self.window_ms,
            max_queue=self.max_queue,
            name=f"sim-batcher-{variant.id}",
        )
        log.info(
            "shared session loaded model=%s version=%s variant=%s host_ms_per_row=%.4f",
            model.name,
            model.version,
            variant.id,
            host_ms,
        )
        return SharedSession(model, batcher, host_ms)

    def sessions(self) -> list[SharedSession]:
        with self._lock:
            return list(self._sessions.values())

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.batcher.close()
            s.model.close()
