"""Load a compiled model directory: manifest, the variant for this device, verified files, a session.

Hashes and sizes are checked before the runtime opens anything, and the runtime's
view of inputs/outputs must match the manifest, so a tampered or half-copied model
directory fails at start-up with a message, not at the first request.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tandem.edge_agent.errors import BadRequestError, ModelLoadError, ShapeNotServedError
from tandem.hardware_profiles import Profile, ProfileError, get_profile
from tandem.hardware_profiles.probe import DeviceProbe, Placement, placement_available, placements, probe_device
from tandem.hardware_profiles.runtimes import RuntimeSession, RuntimeUnavailableError, load_session
from tandem.protocols.limits import MAX_BATCH_ROWS
from tandem.protocols.manifest import Manifest, ManifestError, TensorSpec, Variant, load_manifest
from tandem.tasks import TaskError, TaskSpec
from tandem.tasks.shapes import Bucket, BucketedSession, ShapeError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# Runtimes whose ports carry several names and report any one of them.
_ALIASING_RUNTIMES = ("openvino",)


@dataclass
class LoadedModel:
    """A ready-to-run variant and the manifest it came from."""

    manifest: Manifest
    variant: Variant
    session: RuntimeSession
    model_dir: Path
    renames: dict[str, str] = field(default_factory=dict)  # manifest input name -> runtime's, where they differ
    # Which variant and placement were chosen, why, and every one tried before it
    # ({"variant", "runtime", "tier", "placement", "reason", "tried": [...], "probe": {...}}).
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def buckets(self) -> BucketedSession | None:
        """The static shape buckets the variant was built in (LiteRT --shapes), if any."""
        return self.session if isinstance(self.session, BucketedSession) else None

    def check_shapes(self, feeds: dict[str, np.ndarray]) -> None:
        """Refuse, before any queueing, a request shape no bucket takes (ShapeNotServedError names them)."""
        buckets = self.buckets
        if buckets is None:
            return
        try:
            buckets.pick({n: tuple(a.shape) for n, a in feeds.items() if n in buckets.buckets[0].inputs})
        except ShapeError as exc:
            raise ShapeNotServedError(f"variant {self.variant.id!r}: {exc}") from None

    def runtime_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds keyed by the names the runtime knows its inputs by."""
        if not self.renames:
            return feeds
        return {self.renames.get(k, k): v for k, v in feeds.items()}

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def input_specs(self) -> list[TensorSpec]:
        return self.variant.inputs

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.variant.outputs]

    def close(self) -> None:
        self.session.close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def choose_variant(manifest: Manifest, profile: str, variant_id: str | None = None) -> Variant:
    """The configured variant if named, else the compiler's choice for `profile`."""
    try:
        return manifest.variant(variant_id) if variant_id else manifest.variant_for_profile(profile)
    except ManifestError as exc:
        raise ModelLoadError(f"{manifest.name} {manifest.version}: {exc}") from exc


def verify_files(model_dir: Path, variant: Variant) -> None:
    for entry in variant.files:
        path = model_dir / entry.path
        if not path.is_file():
            raise ModelLoadError(f"{path}: file of variant {variant.id!r} is missing")
        size = path.stat().st_size
        if size != entry.size:
            raise ModelLoadError(f"{path}: size {size} does not match the manifest ({entry.size}); copy it again")
        if sha256_file(path) != entry.sha256:
            raise ModelLoadError(f"{path}: sha256 does not match the manifest; the file is corrupt or was modified")


def check_io(variant: Variant, session: RuntimeSession) -> dict[str, str]:
    """The runtime must see the inputs and outputs the manifest promises (dtypes, ranks).

    Names are matched; on OpenVINO, which keeps several names per port and may report
    any one of them, an unmatched name falls back to the tensor at the same position. Returns manifest input name -> the runtime's name for it.
    """
    feed_names: dict[str, str] = {}
    for what, declared, actual in (
        ("input", variant.inputs, session.inputs),
        ("output", variant.outputs, session.outputs),
    ):
        actual = list(actual)
        by_name = {s.name: s for s in actual}
        for i, spec in enumerate(declared):
            got = by_name.get(spec.name)
            if got is None and session.runtime in _ALIASING_RUNTIMES and len(actual) == len(declared):
                got = actual[i]
                log.debug(
                    "variant=%s %s %s matched by position to the runtime's %s", variant.id, what, spec.name, got.name
                )
            if got is None:
                raise ModelLoadError(
                    f"variant {variant.id!r}: {what} {spec.name!r} of the manifest is not in the model "
                    f"(the runtime sees: {', '.join(by_name)})"
                )
            if got.dtype != spec.dtype:
                raise ModelLoadError(
                    f"variant {variant.id!r}: {what} {spec.name!r} is {got.dtype} in the model "
                    f"but {spec.dtype} in the manifest"
                )
            if len(got.shape) != len(spec.shape):
                raise ModelLoadError(
                    f"variant {variant.id!r}: {what} {spec.name!r} has rank {len(got.shape)} in the "
                    f"model but {len(spec.shape)} in the manifest"
                )
            if what == "input":
                feed_names[spec.name] = got.name
    return feed_names


@dataclass(frozen=True)
class Attempt:
    """One step of the fallback chain: a variant on a placement."""

    variant: Variant
    placement: Placement

    @property
    def label(self) -> str:
        return f"{self.variant.id} on {self.placement.label}"


def variant_order(manifest: Manifest, profile: str, variant_id: str | None = None) -> list[Variant]:
    """The configured variant alone, else the compiler's choice for `profile`, then its other
    ranked candidates, then any other variant listed for `profile`."""
    first = choose_variant(manifest, profile, variant_id)
    if variant_id:
        return [first]
    choice = manifest.profiles[profile]
    rejected = {s.get("variant") for s in choice.skipped}  # over a budget: never served, not even as a fallback
    ids = [first.id] + [c for c in choice.candidates if c != first.id]
    ids += [v.id for v in manifest.variants if profile in v.profiles and v.id not in ids]
    known = {v.id for v in manifest.variants}
    return [manifest.variant(i) for i in ids if i in known and (i == first.id or i not in rejected)]


def plan_attempts(variants: Sequence[Variant], hw: Profile | None) -> list[Attempt]:
    """The fallback chain, NPU -> GPU -> CPU: every variant on its best tier before any on the next.

    Pure. A runtime the profile does not list (or an unknown profile) gets the CPU placement only.
    """
    attempts = []
    for v in variants:
        target = hw.runtime_target(v.runtime) if hw is not None else None
        attempts += [Attempt(v, p) for p in placements(target, v.runtime)]
    tiers = ("npu", "gpu", "cpu")
    return sorted(attempts, key=lambda a: tiers.index(a.placement.tier))  # stable: variant order within a tier


def _hardware_profile(profile: str) -> Profile | None:
    try:
        return get_profile(profile)
    except ProfileError:
        return None  # a profile only the manifest knows: the manifest's options, CPU placement


def open_variant(
    model_dir: Path, variant: Variant, options: dict[str, Any], task: dict[str, Any] | None
) -> RuntimeSession:
    """The variant's session; one per static shape bucket behind a BucketedSession when it has buckets
    (serving and the OTA self-test open a variant the same way)."""
    raw = variant.options.get("buckets")
    if not raw:
        return load_session(variant.runtime, model_dir / variant.model_file.path, **options)
    try:
        buckets = [Bucket.from_dict(b, f"variant {variant.id} buckets[{i}]") for i, b in enumerate(raw)]
        spec = TaskSpec.from_dict(task, "manifest task") if task else None
    except TaskError as exc:
        raise ModelLoadError(f"variant {variant.id!r}: {exc}") from exc
    known = {f.path for f in variant.files}
    for b in buckets:
        if b.file not in known:  # only files the manifest hashes are ever opened
            raise ModelLoadError(f"variant {variant.id!r}: bucket file {b.file!r} is not one of the variant's files")
    sessions: list[RuntimeSession] = []
    try:
        for b in buckets:
            sessions.append(load_session(variant.runtime, model_dir / b.file, **options))
    except BaseException:
        for s in sessions:
            s.close()
        raise
    pad_axes = {str(k): [int(a) for a in v] for k, v in dict(variant.options.get("pad_axes", {})).items()}
    return BucketedSession(sessions, buckets, spec, pad_axes)


def _open(
    model_dir: Path, attempt: Attempt, threads: int | None, manifest_task: dict[str, Any] | None = None
) -> tuple[RuntimeSession, dict[str, str]]:
    variant = attempt.variant
    options = dict(variant.options.get("session", {}))
    options.update(attempt.placement.options)
    if threads is not None:
        options["threads"] = threads
    try:
        session = open_variant(model_dir, variant, options, manifest_task)
    except RuntimeUnavailableError as exc:
        raise ModelLoadError(f"variant {variant.id!r} ({variant.runtime}): {exc}") from exc
    except TypeError as exc:
        raise ModelLoadError(
            f"variant {variant.id!r}: bad session options {options} for {variant.runtime}: {exc}"
        ) from exc
    try:
        return session, check_io(variant, session)
    except ModelLoadError:
        session.close()
        raise


def load_model(
    model_dir: str | Path,
    profile: str,
    variant_id: str | None = None,
    *,
    threads: int | None = None,
    probe: DeviceProbe | None = None,
    hardware_profile: Profile | None = None,
) -> LoadedModel:
    """Open the best variant of `model_dir` that `profile` allows and this device can run.

    Walks the fallback chain (`plan_attempts`): placements the probe says are absent
    are skipped; a variant whose runtime fails to open it is recorded and the next one
    tried (logged at WARNING, the reason in `selection`, shown by /healthz). A file that is
    missing or fails its size/sha256 check raises ModelLoadError: never silently another variant. `variant_id` pins the variant
    (its placements still fall back). `probe` and `hardware_profile` default to this
    device's probe and the named built-in/TANDEM_PROFILE_PATH profile. Raises
    ModelLoadError naming every attempt when none loads.
    """
    model_dir = Path(model_dir)
    try:
        manifest = load_manifest(model_dir)
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from exc
    variants = variant_order(manifest, profile, variant_id)
    hw = hardware_profile if hardware_profile is not None else _hardware_profile(profile)
    attempts = plan_attempts(variants, hw)
    own_probe = probe is None
    probed: set[str] = set()
    tried: list[dict[str, str]] = []
    verified: set[str] = set()
    for attempt in attempts:
        variant, placement = attempt.variant, attempt.placement
        step = {"variant": variant.id, "placement": placement.label, "tier": placement.tier}
        if probe is None or (own_probe and variant.runtime not in probed):
            probed.add(variant.runtime)  # lazily: a start that loads ONNX Runtime need not import OpenVINO
            probe = probe_device(probed)
        available, why = placement_available(placement, probe)
        if not available:
            tried.append({**step, "outcome": "absent", "reason": why})
            continue
        if variant.id not in verified:
            # A file that is missing or not as signed is an error, never a reason to serve another variant.
            verify_files(model_dir, variant)
            verified.add(variant.id)
        try:
            session, feed_names = _open(model_dir, attempt, threads, manifest.task)
        except ModelLoadError as exc:
            log.warning("variant failed to load variant=%s placement=%s reason=%s", variant.id, placement.label, exc)
            tried.append({**step, "outcome": "failed", "reason": str(exc)})
            continue
        reason = _reason(attempt, why, tried, variants[0], hw, pinned=bool(variant_id))
        selection = {
            "variant": variant.id,
            "runtime": variant.runtime,
            "tier": placement.tier,
            "placement": placement.label,
            "reason": reason,
            "tried": tried,
            "probe": probe.summary(),
        }
        if hw is not None and hw.cpu_features:
            missing = [f for f in hw.cpu_features if f not in probe.cpu_features]
            if missing:
                selection["missing_cpu_features"] = missing
        log.info(
            "model loaded name=%s version=%s variant=%s runtime=%s placement=%s tried=%d",
            manifest.name,
            manifest.version,
            variant.id,
            variant.runtime,
            placement.label,
            len(tried),
        )
        if variant.id != variants[0].id:
            log.warning(
                "serving a fallback variant name=%s version=%s variant=%s instead of %s: %s",
                manifest.name,
                manifest.version,
                variant.id,
                variants[0].id,
                reason,
            )
        renames = {k: v for k, v in feed_names.items() if k != v}
        return LoadedModel(
            manifest=manifest,
            variant=variant,
            session=session,
            model_dir=model_dir,
            renames=renames,
            selection=selection,
        )
    detail = "; ".join(f"{t['variant']} on {t['placement']}: {t['reason']}" for t in tried)
    raise ModelLoadError(f"{manifest.name} {manifest.version}: no variant loads for profile {profile!r} ({detail})")


def _reason(
    chosen: Attempt, why: str, tried: list[dict[str, str]], preferred: Variant, hw: Profile | None, *, pinned: bool
) -> str:
    if chosen.variant.id != preferred.id:
        head = f"{chosen.label}: fallback from {preferred.id}"
    else:
        head = f"{chosen.label}: " + ("the configured variant" if pinned else "the compiler's choice for this profile")
    head += f" ({why})"
    seen: list[str] = []
    for t in tried:  # one line per distinct cause: the same absent NPU is not repeated per variant
        cause = (
            f"{t['placement']} {t['outcome']}: {t['reason']}"
            if t["outcome"] == "absent"
            else f"{t['variant']} on {t['placement']} {t['outcome']}: {t['reason']}"
        )
        if cause not in seen:
            seen.append(cause)
    if seen:
        head += "; passed over: " + "; ".join(seen)
    if hw is None:
        head += "; profile unknown to this agent: CPU placement only"
    return head


def match_inputs(
    specs: Sequence[TensorSpec], names: Sequence[str], arrays: Sequence[np.ndarray], *, allow_nan: bool
) -> dict[str, np.ndarray]:
    """Check request tensors against the model's inputs; BadRequestError names what is wrong.

    Empty names match by position. Dynamic axes (-1) accept any size; a batch axis
    must agree across inputs.
    """
    if len(arrays) != len(specs):
        raise BadRequestError(
            f"the model takes {len(specs)} input(s) ({', '.join(s.name for s in specs)}); "
            f"the request sent {len(arrays)}"
        )
    # runs on every request: the cheap comparisons first, names and messages only on failure
    feeds: dict[str, np.ndarray] = {}
    by_name: dict[str, TensorSpec] | None = None
    for i, (name, array) in enumerate(zip(names, arrays)):
        if name:
            if by_name is None:
                by_name = {s.name: s for s in specs}
            spec = by_name.get(name)
            if spec is None:
                raise BadRequestError(f"input {name!r} is not an input of the model (inputs: {', '.join(by_name)})")
        else:
            spec = specs[i]
        if spec.name in feeds:
            raise BadRequestError(f"input {spec.name!r} was sent twice")
        dtype = array.dtype
        if dtype != spec.dtype and dtype.name != spec.dtype:  # dtype.name alone costs ~1.5 us
            raise BadRequestError(f"input {spec.name!r}: dtype {dtype.name}, the model expects {spec.dtype}")
        shape = array.shape
        if len(shape) != len(spec.shape) or not all(d == -1 or d == a for d, a in zip(spec.shape, shape)):
            want = "[" + ", ".join("N" if d == -1 else str(d) for d in spec.shape) + "]"
            raise BadRequestError(f"input {spec.name!r}: shape {list(shape)}, the model expects {want}")
        if shape and shape[0] > MAX_BATCH_ROWS and spec.shape[0] == -1:
            raise BadRequestError(
                f"input {spec.name!r}: {shape[0]} rows; at most {MAX_BATCH_ROWS} per request "
                "(protocols/limits.py MAX_BATCH_ROWS): split the batch"
            )
        if not allow_nan and dtype.kind == "f" and not np.isfinite(array).all():
            raise BadRequestError(f"input {spec.name!r}: contains NaN or infinity, which this agent does not accept")
        feeds[spec.name] = array
    if len(feeds) > 1:
        # each input's batch axis is its first dynamic one (a state [2, N, 128]: axis 1), else axis 0
        axes = {s.name: (s.shape.index(-1) if -1 in s.shape else 0) for s in specs}
        rows = {a.shape[axes[n]] for n, a in feeds.items() if a.ndim > axes[n]}
        if len(rows) > 1:
            raise BadRequestError(
                f"inputs disagree on the batch size (sizes along each input's batch axis: {sorted(rows)})"
            )
    return feeds
