"""A cloud model the hub serves: one variant of a compiled model directory behind a micro-batcher.

Loading checks the manifest, the variant's file hashes and the runtime's view of the
inputs and outputs; `check_inputs` turns a decoded request into feeds or a message
naming what is wrong, before anything reaches the runtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tandem.cloud_hub.errors import InvalidInputError
from tandem.hardware_profiles.runtimes import RuntimeUnavailableError, load_session
from tandem.hardware_profiles.runtimes.base import IOSpec, RuntimeSession
from tandem.hardware_profiles.runtimes.batching import MicroBatcher, batch_axis_supported
from tandem.protocols.manifest import MANIFEST_FILENAME, Manifest, ManifestError, Variant, load_manifest
from tandem.protocols.signing import SignatureError, verify_manifest
from tandem.protocols.tensor_codec import TensorCodecError, datatype_of, dtype_of

log = logging.getLogger(__name__)

# Triton's platform names where one exists, so stock clients recognise them.
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino", "litert": "tensorflow_lite"}


class ModelDirError(InvalidInputError):
    """A model directory cannot be served (manifest, variant, hashes, runtime)."""


class BadInputError(ValueError):
    """A request's tensors do not fit the model; the message names the tensor and the problem."""


@dataclass(frozen=True)
class BatchOptions:
    max_batch: int = 8
    window_ms: float = 1.0
    max_queue: int = 128
    # OpenVINO variants: batches run on an AsyncInferQueue compiled for throughput (cloud_hub/inference/ov_async.py)
    openvino_async: bool = True
    openvino_streams: int = 0  # 0: OpenVINO's choice for the THROUGHPUT hint


class CloudModel:
    """One loaded variant with its batcher; `submit` is safe from many threads."""

    def __init__(
        self, model_dir: Path, manifest: Manifest, variant: Variant, session: RuntimeSession, batch: BatchOptions
    ) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self.variant = variant
        self.session = session
        self.name = manifest.name
        self.version = manifest.version
        self.platform = _PLATFORMS.get(variant.runtime, variant.runtime)
        self.inputs: list[IOSpec] = list(session.inputs)
        self.outputs: list[IOSpec] = list(session.outputs)
        self.output_names = [o.name for o in self.outputs]
        self.batcher = _batcher_for(model_dir, variant, session, batch, f"hub-batcher-{self.name}")
        # A zero-row request is answered without the runtime when every input and output batches on axis 0.
        self.empty_batch_ok = batch_axis_supported(self.inputs, self.outputs)
        # inputs this variant was specialized to (tandem-compile --bind): an agent sends them along (its
        # hub may serve the unspecialized model); here they are checked and dropped
        served = {spec.name for spec in self.inputs}
        self.bound = {b.name: b for b in manifest.bound_inputs if b.name not in served}
        self.probe_run_s: float | None = None  # the fastest run on zeros at load (load_cloud_model)

    def empty_outputs(self) -> dict[str, np.ndarray]:
        """Zero-row outputs for a zero-row batch (other dynamic axes are 0 too)."""
        return {
            spec.name: np.zeros([0] + [max(d, 0) for d in spec.shape[1:]], dtype=_numpy_dtype(spec.dtype))
            for spec in self.outputs
        }

    def check_inputs(
        self, tensors: Mapping[str, np.ndarray], *, allow_non_finite: bool = False
    ) -> dict[str, np.ndarray]:
        """Feeds for the runtime, or BadInputError naming a missing/unknown tensor, dtype or shape."""
        if self.bound and not self.bound.keys().isdisjoint(tensors):
            for name in self.bound.keys() & tensors.keys():
                why = self.bound[name].mismatch(tensors[name])
                if why is not None:
                    raise BadInputError(f"model {self.name!r}: {why}")
            tensors = {n: a for n, a in tensors.items() if n not in self.bound}
        expected = {spec.name: spec for spec in self.inputs}
        missing = sorted(set(expected) - set(tensors))
        unknown = sorted(set(tensors) - set(expected))
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown input(s) {', '.join(unknown)}")
            raise BadInputError(f"model {self.name!r}: {'; '.join(parts)} (expects: {', '.join(expected)})")
        feeds: dict[str, np.ndarray] = {}
        for name, spec in expected.items():
            array = tensors[name]
            want = _datatype_name(spec.dtype)
            got = datatype_of(array.dtype)
            if got != want:
                raise BadInputError(f"input {name!r}: datatype {got}, model {self.name!r} expects {want}")
            if len(array.shape) != len(spec.shape) or any(s != -1 and s != d for s, d in zip(spec.shape, array.shape)):
                shown = [d if d != -1 else "N" for d in spec.shape]
                raise BadInputError(f"input {name!r}: shape {list(array.shape)} does not fit {shown}")
            if array.size == 0 and not (self.empty_batch_ok and array.shape[0] == 0 and 0 not in array.shape[1:]):
                why = "" if self.empty_batch_ok else f" (model {self.name!r} has no batch axis)"
                raise BadInputError(f"input {name!r}: shape {list(array.shape)} has no elements{why}")
            if not allow_non_finite and array.dtype.kind == "f" and not np.isfinite(array).all():
                raise BadInputError(f"input {name!r}: contains NaN or infinity")
            feeds[name] = _as_text(name, array) if spec.dtype == "string" else array
        # each input's batch axis is its first dynamic one (a state [2, N, 128]: axis 1), else axis 0
        axes = {n: (list(spec.shape).index(-1) if -1 in spec.shape else 0) for n, spec in expected.items()}
        if len({a.shape[axes[n]] for n, a in feeds.items() if a.ndim > axes[n]}) > 1:
            raise BadInputError(
                f"model {self.name!r}: inputs disagree on the batch size (along each input's batch axis)"
            )
        return feeds

    def close(self) -> None:
        self.batcher.close()
        self.session.close()


def _batcher_for(
    model_dir: Path, variant: Variant, session: RuntimeSession, batch: BatchOptions, name: str
) -> MicroBatcher:
    """The micro-batcher for a variant: OpenVINO's run on asynchronous infer requests when allowed."""
    kw: dict[str, Any] = dict(
        max_batch=batch.max_batch, window_ms=batch.window_ms, max_queue=batch.max_queue, name=name
    )
    if variant.runtime == "openvino" and batch.openvino_async:
        from tandem.cloud_hub.inference.ov_async import AsyncInferBatcher

        options = variant.options.get("session", {})
        ov_config: dict[str, Any] = {}
        if options.get("inference_precision"):
            ov_config["INFERENCE_PRECISION_HINT"] = options["inference_precision"]
        try:
            batcher = AsyncInferBatcher(
                session, model_dir / variant.model_file.path, streams=batch.openvino_streams, ov_config=ov_config, **kw
            )
        except Exception as exc:  # noqa: BLE001 - the synchronous batcher still serves
            log.warning("model=%s: OpenVINO asynchronous requests unavailable (%s); one request at a time", name, exc)
        else:
            log.info("%s: OpenVINO AsyncInferQueue with %d requests", name, batcher.streams)
            return batcher
    return MicroBatcher(session, **kw)


def load_cloud_model(
    model_dir: str | Path,
    *,
    hub_profile: str = "cpu-x86",
    variant_id: str | None = None,
    batch: BatchOptions = BatchOptions(),
    threads: int | None = None,
    verify_hashes: bool = True,
    trusted_key: Any = None,
    single_thread_below_s: float = 0.0,
) -> CloudModel:
    """Load the variant compiled for `hub_profile` (or `variant_id`) from a model directory.

    With `trusted_key` (an ed25519 public key) the manifest's signature must verify. An ONNX
    Runtime variant whose probe run takes less than `single_thread_below_s`, with no thread count
    asked for, is reloaded with one intra-op thread (see `_single_thread_if_tiny`).
    """
    path = Path(model_dir)
    try:
        manifest = load_manifest(path)
        variant = manifest.variant(variant_id) if variant_id else manifest.variant_for_profile(hub_profile)
    except ManifestError as exc:
        raise ModelDirError(f"{path}: {exc}") from exc
    if trusted_key is not None:
        try:
            verify_manifest(json.loads((path / MANIFEST_FILENAME).read_bytes()), trusted_key)
        except SignatureError as exc:
            raise ModelDirError(f"{path}: {exc}") from exc
    if verify_hashes:
        for entry in variant.files:
            _verify_file(path, entry.path, entry.sha256, entry.size)
    options = dict(variant.options.get("session", {}))  # the compiler's session options
    if threads is not None:
        options["threads"] = threads
    try:
        session = load_session(variant.runtime, path / variant.model_file.path, **options)
    except (RuntimeUnavailableError, TypeError) as exc:
        raise ModelDirError(f"{path}: variant {variant.id!r} ({variant.runtime}) cannot be loaded: {exc}") from exc
    try:
        for spec in list(session.inputs) + list(session.outputs):
            _datatype_name(spec.dtype)
    except BadInputError as exc:
        session.close()
        raise ModelDirError(f"{path}: variant {variant.id!r}: {exc}") from exc
    probe_s = probe_run_s(session)
    if variant.runtime == "onnxruntime" and "threads" not in options and single_thread_below_s > 0:
        session, probe_s = _single_thread_if_tiny(
            session, path / variant.model_file.path, options, probe_s, single_thread_below_s
        )
    log.info(
        "loaded model=%s version=%s variant=%s runtime=%s from %s",
        manifest.name,
        manifest.version,
        variant.id,
        variant.runtime,
        path,
    )
    model = CloudModel(path, manifest, variant, session, batch)
    model.probe_run_s = probe_s
    return model


def probe_run_s(session: RuntimeSession, budget_s: float = 0.02, most: int = 5) -> float | None:
    """The fastest of a few runs on zeros (dynamic axes 1) after one warm-up; None when the model
    cannot run on zeros or has text inputs. Stops once `budget_s` is spent, so a big model costs
    about two runs. The fastest, not the mean: on a busy host a run is often preempted."""
    feeds: dict[str, np.ndarray] = {}
    for spec in session.inputs:
        if spec.dtype == "string":
            return None
        try:
            feeds[spec.name] = np.zeros([d if d > 0 else 1 for d in spec.shape], dtype=_numpy_dtype(spec.dtype))
        except (BadInputError, TypeError, ValueError):
            return None
    try:
        session.run(feeds)  # warm-up: the first run allocates
        best = float("inf")
        spent = 0.0
        for _ in range(most):
            t0 = time.perf_counter()
            session.run(feeds)
            took = time.perf_counter() - t0
            best, spent = min(best, took), spent + took
            if spent > budget_s:
                break
    except Exception as exc:  # noqa: BLE001 - a probe that fails only means "not measured"
        log.debug("probe run failed: %r", exc)
        return None
    return best


def _single_thread_if_tiny(
    session: RuntimeSession, model_file: Path, options: dict[str, Any], probe_s: float | None, below_s: float
) -> tuple[RuntimeSession, float | None]:
    """A tiny ONNX Runtime model reloaded with one intra-op thread (and its probe time re-measured).

    ONNX Runtime's default pool (one thread per core) spins after every run waiting for more
    work: for a model of microseconds that spinning thread took a whole core from the gRPC
    threads on a 2-core host (bench/peers.py, digits at 64 in flight: 0.85 ms of CPU per request
    in the pool thread, throughput halved). One thread runs such a model as fast, without it.
    """
    if probe_s is None or probe_s >= below_s:
        return session, probe_s
    try:
        single = load_session("onnxruntime", model_file, **{**options, "threads": 1})
    except (RuntimeUnavailableError, TypeError) as exc:
        log.debug("%s: single-threaded reload failed (%s); the default pool stays", model_file, exc)
        return session, probe_s
    session.close()
    log.info("%s: %.0f us a run, served with one intra-op thread", model_file, probe_s * 1e6)
    return single, probe_run_s(single)


def _verify_file(model_dir: Path, rel: str, sha256: str, size: int) -> None:
    file = model_dir / rel
    if not file.is_file():
        raise ModelDirError(f"{model_dir}: {rel} is listed in the manifest but missing")
    if file.stat().st_size != size:
        raise ModelDirError(f"{model_dir}: {rel} is {file.stat().st_size} bytes, the manifest says {size}")
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise ModelDirError(f"{model_dir}: {rel} does not match its sha256 in the manifest (corrupt or replaced)")


def _datatype_name(dtype: str) -> str:
    try:
        return datatype_of(dtype)
    except (TensorCodecError, TypeError) as exc:
        raise BadInputError(f"dtype {dtype!r} is not servable over v2: {exc}") from exc


def _numpy_dtype(dtype: str) -> np.dtype:
    return dtype_of(datatype_of(dtype))


def _as_text(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES for a string input: ONNX Runtime wants str elements (it would feed bytes as "b'...'")."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, value in enumerate(array.reshape(-1)):
        try:
            flat[i] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError as exc:
            raise BadInputError(f"input {name!r}: element {i} is not UTF-8 text ({exc.reason})") from None
    return out
