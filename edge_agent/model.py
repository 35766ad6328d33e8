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
from typing import Sequence

import numpy as np

from edge_agent.errors import BadRequestError, ModelLoadError
from hardware_profiles.runtimes import RuntimeSession, RuntimeUnavailableError, load_session
from protocols.manifest import Manifest, ManifestError, TensorSpec, Variant, load_manifest

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
    for what, declared, actual in (("input", variant.inputs, session.inputs), ("output", variant.outputs, session.outputs)):
        actual = list(actual)
        by_name = {s.name: s for s in actual}
        for i, spec in enumerate(declared):
            got = by_name.get(spec.name)
            if got is None and session.runtime in _ALIASING_RUNTIMES and len(actual) == len(declared):
                got = actual[i]
                log.debug("variant=%s %s %s matched by position to the runtime's %s", variant.id, what, spec.name,
                          got.name)
            if got is None:
                raise ModelLoadError(f"variant {variant.id!r}: {what} {spec.name!r} of the manifest is not in the model "
                                     f"(the runtime sees: {', '.join(by_name)})")
            if got.dtype != spec.dtype:
                raise ModelLoadError(f"variant {variant.id!r}: {what} {spec.name!r} is {got.dtype} in the model "
                                     f"but {spec.dtype} in the manifest")
            if len(got.shape) != len(spec.shape):
                raise ModelLoadError(f"variant {variant.id!r}: {what} {spec.name!r} has rank {len(got.shape)} in the "
                                     f"model but {len(spec.shape)} in the manifest")
            if what == "input":
                feed_names[spec.name] = got.name
    return feed_names


def load_model(model_dir: str | Path, profile: str, variant_id: str | None = None, *,
               threads: int | None = None) -> LoadedModel:
    """Open the variant of `model_dir` for `profile` (or `variant_id`); raises ModelLoadError."""
    model_dir = Path(model_dir)
    try:
        manifest = load_manifest(model_dir)
    except ManifestError as exc:
        raise ModelLoadError(str(exc)) from exc
    variant = choose_variant(manifest, profile, variant_id)
    verify_files(model_dir, variant)
    options = dict(variant.options.get("session", {}))
    if threads is not None:
        options["threads"] = threads
    try:
        session = load_session(variant.runtime, model_dir / variant.model_file.path, **options)
    except RuntimeUnavailableError as exc:
        raise ModelLoadError(f"variant {variant.id!r} ({variant.runtime}): {exc}") from exc
    except TypeError as exc:
        raise ModelLoadError(f"variant {variant.id!r}: bad session options {options} for {variant.runtime}: {exc}") from exc
    try:
        feed_names = check_io(variant, session)
    except ModelLoadError:
        session.close()
        raise
    log.info("model loaded name=%s version=%s variant=%s runtime=%s", manifest.name, manifest.version,
             variant.id, variant.runtime)
    renames = {k: v for k, v in feed_names.items() if k != v}
    return LoadedModel(manifest=manifest, variant=variant, session=session, model_dir=model_dir, renames=renames)


def match_inputs(specs: Sequence[TensorSpec], names: Sequence[str], arrays: Sequence[np.ndarray], *,
                 allow_nan: bool) -> dict[str, np.ndarray]:
    """Check request tensors against the model's inputs; BadRequestError names what is wrong.

    Empty names match by position. Dynamic axes (-1) accept any size; a batch axis
    must agree across inputs.
    """
    if len(arrays) != len(specs):
        raise BadRequestError(f"the model takes {len(specs)} input(s) ({', '.join(s.name for s in specs)}); "
                              f"the request sent {len(arrays)}")
    feeds: dict[str, np.ndarray] = {}
    by_name = {s.name: s for s in specs}
    for i, (name, array) in enumerate(zip(names, arrays)):
        spec = by_name.get(name) if name else specs[i]
        if spec is None:
            raise BadRequestError(f"input {name!r} is not an input of the model (inputs: {', '.join(by_name)})")
        if spec.name in feeds:
            raise BadRequestError(f"input {spec.name!r} was sent twice")
        if array.dtype.name != spec.dtype:
            raise BadRequestError(f"input {spec.name!r}: dtype {array.dtype.name}, the model expects {spec.dtype}")
        if array.ndim != len(spec.shape) or any(d != -1 and d != a for d, a in zip(spec.shape, array.shape)):
            want = "[" + ", ".join("N" if d == -1 else str(d) for d in spec.shape) + "]"
            raise BadRequestError(f"input {spec.name!r}: shape {list(array.shape)}, the model expects {want}")
        if not allow_nan and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadRequestError(f"input {spec.name!r}: contains NaN or infinity, which this agent does not accept")
        feeds[spec.name] = array
    rows = {a.shape[0] for a in feeds.values() if a.ndim}
    if len(rows) > 1:
        raise BadRequestError(f"inputs disagree on the batch size (leading axes: {sorted(rows)})")
    return feeds
