"""The model manifest: the one contract between compiler, hub and agent.

A manifest describes one model version: its variants per runtime and precision,
the variant chosen per hardware profile, golden inputs for the device self-test and
the drift reference. It is JSON, validated on load, and signed with ed25519 over its
canonical form (see `protocols.signing`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tandem.protocols.errors import ContractError

__all__ = [
    "BoundInput",
    "CALIBRATION_GOALS",
    "CONFIDENCE_MEASURES",
    "Calibration",
    "DTYPES",
    "FileEntry",
    "Golden",
    "MANIFEST_FILENAME",
    "Manifest",
    "ManifestError",
    "PRECISIONS",
    "ProfileChoice",
    "RUNTIMES",
    "SCHEMA_VERSION",
    "TensorSpec",
    "Variant",
    "load_manifest",
    "parse_version",
]

SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.json"

RUNTIMES = ("onnxruntime", "openvino", "litert")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# numpy names of every v2 datatype protocols.tensor_codec speaks (BF16 -> "bfloat16", BYTES -> "bytes"),
# so a manifest can describe any tensor the hub and the fallback wire can carry.
DTYPES = (
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "bytes",
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ContractError):
    """A manifest is malformed; the message names the offending field."""


def parse_version(version: str) -> tuple[int, int, int]:
    """Parse MAJOR.MINOR.PATCH into a tuple that orders versions (anti-rollback)."""
    match = _VERSION_RE.match(version) if isinstance(version, str) else None
    if not match:
        raise ManifestError(f"version: {version!r} is not MAJOR.MINOR.PATCH (e.g. 1.2.0)")
    return tuple(int(part) for part in match.groups())  # type: ignore[return-value]


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a model input or output; -1 marks a dynamic axis."""

    name: str
    dtype: str
    shape: list[int]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "TensorSpec":
        name = _req_str(data, "name", where)
        dtype = _req_str(data, "dtype", where)
        if dtype not in DTYPES:
            raise ManifestError(f"{where}.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
        shape = data.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= -1 for d in shape):
            raise ManifestError(f"{where}.shape: expected a list of integers (-1 for dynamic), got {shape!r}")
        return cls(name=name, dtype=dtype, shape=list(shape))


@dataclass(frozen=True)
class BoundInput:
    """A scalar input fixed when the model was compiled (`tandem-compile --bind NAME=VALUE`): the
    variants were specialized to `value` and no longer take it. A request may still send it, with
    this value only; a fallback sends it to the hub, whose model may not be specialized."""

    name: str
    dtype: str
    value: int | float | bool

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "BoundInput":
        name = _req_str(data, "name", where)
        dtype = _req_str(data, "dtype", where)
        if dtype not in DTYPES or dtype in ("bytes", "bfloat16"):
            raise ManifestError(f"{where}.dtype: {dtype!r} is not a numeric dtype of {', '.join(DTYPES)}")
        value = _req(data, "value", where)
        if not isinstance(value, (int, float, bool)) or (dtype == "bool") != isinstance(value, bool):
            raise ManifestError(f"{where}.value: expected a {dtype} scalar, got {value!r}")
        return cls(name=name, dtype=dtype, value=value)

    def mismatch(self, array: Any, who: str = "the request") -> str | None:
        """Why a request's tensor (a numpy array) is not this bound value, or None when it is."""
        shape = tuple(getattr(array, "shape", ()))
        dtype = getattr(getattr(array, "dtype", None), "name", type(array).__name__)
        if dtype == self.dtype and shape == () and array.item() == self.value:
            return None
        sent = f"{array.item()!r}" if shape == () and hasattr(array, "item") else f"shape {list(shape)}"
        return (
            f"input {self.name!r} is bound to {self.value!r} ({self.dtype}, a 0-d scalar) in this model "
            f"(tandem-compile --bind {self.name}={self.value}); {who} sent {sent} ({dtype}): "
            f"send {self.value!r} as {self.dtype} or leave {self.name!r} out"
        )


@dataclass(frozen=True)
class FileEntry:
    """One file of a variant, addressed by its path inside the model directory."""

    path: str
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "FileEntry":
        path = _req_str(data, "path", where)
        if path.startswith("/") or ".." in Path(path).parts or "\\" in path:
            raise ManifestError(f"{where}.path: {path!r} must be a relative path inside the model directory")
        sha = _req_str(data, "sha256", where)
        if not _SHA256_RE.match(sha):
            raise ManifestError(f"{where}.sha256: expected 64 lowercase hex characters")
        size = data.get("size")
        if not isinstance(size, int) or size < 0:
            raise ManifestError(f"{where}.size: expected a non-negative integer, got {size!r}")
        return cls(path=path, sha256=sha, size=size)


CALIBRATION_GOALS = ("match-reference", "fallback-budget", "hybrid-accuracy")
CONFIDENCE_MEASURES = ("max_prob", "margin", "entropy")


@dataclass
class Calibration:
    """A variant's own confidence calibration: the temperature and fallback threshold
    fitted on held-out data for `goal`, with what they are expected to give.

    The threshold applies to `measure` of the temperature-scaled probabilities of the
    task output; the two were fitted together and are applied together.
    """

    temperature: float
    threshold: float
    goal: dict[str, Any]
    expected_fallback_rate: float
    measure: str = "max_prob"
    output: str | None = None
    expected_accuracy: float | None = None
    expected_hybrid_accuracy: float | None = None
    fit: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "Calibration":
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected an object")
        temperature = _req_number(data, "temperature", where)
        if not temperature > 0:
            raise ManifestError(f"{where}.temperature: expected a positive number, got {temperature!r}")
        threshold = _req_number(data, "threshold", where)
        if not 0.0 <= threshold <= 1.0:
            raise ManifestError(f"{where}.threshold: {threshold!r} must be between 0 and 1")
        goal = _req_dict(data, "goal", where)
        if goal.get("kind") not in CALIBRATION_GOALS:
            raise ManifestError(f"{where}.goal.kind: {goal.get('kind')!r} is not one of {', '.join(CALIBRATION_GOALS)}")
        measure = data.get("measure", "max_prob")
        # "task:KEY": a task's own confidence (tandem.tasks.confidence_measure: task:sigmoid, task:ctc, ...)
        if measure not in CONFIDENCE_MEASURES and not (
            isinstance(measure, str) and measure.startswith("task:") and measure[5:].replace("_", "").isalpha()
        ):
            raise ManifestError(
                f"{where}.measure: {measure!r} is not one of {', '.join(CONFIDENCE_MEASURES)} or task:KIND"
            )
        output = data.get("output")
        if output is not None and not isinstance(output, str):
            raise ManifestError(f"{where}.output: expected an output name or null")
        return cls(
            temperature=temperature,
            threshold=threshold,
            goal=dict(goal),
            expected_fallback_rate=_req_number(data, "expected_fallback_rate", where),
            measure=measure,
            output=output,
            expected_accuracy=_opt_number(data, "expected_accuracy", where),
            expected_hybrid_accuracy=_opt_number(data, "expected_hybrid_accuracy", where),
            fit=dict(_opt_dict(data, "fit", where)),
        )


@dataclass
class Variant:
    """One runnable form of the model: a runtime, a precision and its files."""

    id: str
    runtime: str
    precision: str
    files: list[FileEntry]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    profiles: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: Calibration | None = None  # absent in manifests from before per-variant calibration

    @property
    def model_file(self) -> FileEntry:
        """The file a runtime opens (the first listed; e.g. .onnx, .xml, .tflite)."""
        return self.files[0]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "Variant":
        vid = _req_str(data, "id", where)
        if not _NAME_RE.match(vid):
            raise ManifestError(f"{where}.id: {vid!r} may use letters, digits, '.', '_' and '-' only")
        runtime = _req_str(data, "runtime", where)
        if runtime not in RUNTIMES:
            raise ManifestError(f"{where}.runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
        precision = _req_str(data, "precision", where)
        if precision not in PRECISIONS:
            raise ManifestError(f"{where}.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
        files = [FileEntry.from_dict(f, f"{where}.files[{i}]") for i, f in enumerate(_req_list(data, "files", where))]
        if not files:
            raise ManifestError(f"{where}.files: a variant needs at least one file")
        return cls(
            id=vid,
            runtime=runtime,
            precision=precision,
            files=files,
            inputs=[
                TensorSpec.from_dict(t, f"{where}.inputs[{i}]") for i, t in enumerate(_req_list(data, "inputs", where))
            ],
            outputs=[
                TensorSpec.from_dict(t, f"{where}.outputs[{i}]")
                for i, t in enumerate(_req_list(data, "outputs", where))
            ],
            profiles=[str(p) for p in _opt_list(data, "profiles", where)],
            options=dict(_opt_dict(data, "options", where)),
            metrics=dict(_opt_dict(data, "metrics", where)),
            calibration=(
                Calibration.from_dict(data["calibration"], f"{where}.calibration")
                if data.get("calibration") is not None
                else None
            ),
        )


@dataclass
class ProfileChoice:
    """The variant a hardware profile should run, and why the others were not chosen."""

    chosen: str | None
    reason: str
    candidates: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "ProfileChoice":
        _check_object(data, where)
        chosen = data.get("chosen")
        if chosen is not None and not isinstance(chosen, str):
            raise ManifestError(f"{where}.chosen: expected a variant id or null")
        return cls(
            chosen=chosen,
            reason=str(data.get("reason", "")),
            candidates=[str(c) for c in _opt_list(data, "candidates", where)],
            skipped=[
                dict(_check_object(s, f"{where}.skipped[{i}]")) for i, s in enumerate(_opt_list(data, "skipped", where))
            ],
        )


@dataclass
class Golden:
    """Golden inputs and each variant's expected outputs, for the device self-test."""

    file: FileEntry
    count: int
    atol: float
    min_top1_agreement: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "Golden":
        _check_object(data, where)
        count = data.get("count")
        if not isinstance(count, int) or count < 1:
            raise ManifestError(f"{where}.count: expected a positive integer")
        return cls(
            file=FileEntry.from_dict(_req_dict(data, "file", where), f"{where}.file"),
            count=count,
            atol=_req_number(data, "atol", where),
            min_top1_agreement=_req_number(data, "min_top1_agreement", where),
        )


@dataclass
class Manifest:
    """A whole manifest; `to_dict` / `from_dict` round-trip it exactly."""

    name: str
    version: str
    created_at: str
    expires_at: str | None
    task: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variants: list[Variant]
    profiles: dict[str, ProfileChoice]
    target_profiles: list[str]
    golden: Golden | None = None
    drift_reference: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, str] | None = None
    # The compiler's publisher signature, kept by the hub under its release `signature` (protocols/signing.py).
    publisher_signature: dict[str, str] | None = None
    # inputs fixed at compile time (--bind); absent from `inputs` and from every variant's inputs
    bound_inputs: list[BoundInput] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        raise ManifestError(
            f"variants: no variant with id {variant_id!r} (have: {', '.join(v.id for v in self.variants)})"
        )

    def variant_for_profile(self, profile: str) -> Variant:
        """The variant the compiler chose for `profile`."""
        choice = self.profiles.get(profile)
        if choice is None:
            raise ManifestError(
                f"profiles: this model was not compiled for profile {profile!r} (have: {', '.join(self.profiles)})"
            )
        if choice.chosen is None:
            raise ManifestError(f"profiles.{profile}: no variant fits this profile ({choice.reason})")
        return self.variant(choice.chosen)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("signature", "publisher_signature"):
            if data[key] is None:
                del data[key]
        for variant in data["variants"]:  # keep older manifests byte-identical (their signatures cover them)
            if variant.get("calibration") is None:
                variant.pop("calibration", None)
        if not data["bound_inputs"]:
            del data["bound_inputs"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        if not isinstance(data, Mapping):
            raise ManifestError("manifest: expected a JSON object")
        schema = data.get("schema_version")
        if schema != SCHEMA_VERSION:
            raise ManifestError(f"schema_version: {schema!r} is not supported (this Tandem reads {SCHEMA_VERSION})")
        name = _req_str(data, "name", "manifest")
        if not _NAME_RE.match(name):
            raise ManifestError(f"name: {name!r} may use letters, digits, '.', '_' and '-' only")
        version = _req_str(data, "version", "manifest")
        parse_version(version)
        variants = [
            Variant.from_dict(v, f"variants[{i}]") for i, v in enumerate(_req_list(data, "variants", "manifest"))
        ]
        ids = [v.id for v in variants]
        if len(set(ids)) != len(ids):
            raise ManifestError("variants: variant ids must be unique")
        profiles = {
            str(k): ProfileChoice.from_dict(v, f"profiles.{k}")
            for k, v in _req_dict(data, "profiles", "manifest").items()
        }
        for pname, choice in profiles.items():
            if choice.chosen is not None and choice.chosen not in ids:
                raise ManifestError(f"profiles.{pname}.chosen: {choice.chosen!r} is not a variant id of this manifest")
        golden = data.get("golden")
        signature = data.get("signature")
        if signature is not None and not isinstance(signature, Mapping):
            raise ManifestError("signature: expected an object")
        publisher_signature = data.get("publisher_signature")
        if publisher_signature is not None and not isinstance(publisher_signature, Mapping):
            raise ManifestError("publisher_signature: expected an object")
        bound = [
            BoundInput.from_dict(b, f"bound_inputs[{i}]")
            for i, b in enumerate(_opt_list(data, "bound_inputs", "manifest"))
        ]
        taken = {str(t.get("name")) for t in _req_list(data, "inputs", "manifest") if isinstance(t, Mapping)}
        for i, b in enumerate(bound):
            if b.name in taken:
                raise ManifestError(f"bound_inputs[{i}].name: {b.name!r} is bound, so it cannot also be an input")
        return cls(
            name=name,
            version=version,
            created_at=_req_str(data, "created_at", "manifest"),
            expires_at=data.get("expires_at"),
            task=dict(_req_dict(data, "task", "manifest")),
            inputs=[
                TensorSpec.from_dict(t, f"inputs[{i}]") for i, t in enumerate(_req_list(data, "inputs", "manifest"))
            ],
            outputs=[
                TensorSpec.from_dict(t, f"outputs[{i}]") for i, t in enumerate(_req_list(data, "outputs", "manifest"))
            ],
            variants=variants,
            profiles=profiles,
            target_profiles=[str(p) for p in _req_list(data, "target_profiles", "manifest")],
            golden=Golden.from_dict(golden, "golden") if golden is not None else None,
            drift_reference=dict(_opt_dict(data, "drift_reference", "manifest")),
            source=dict(_opt_dict(data, "source", "manifest")),
            signature=dict(signature) if signature is not None else None,
            publisher_signature=dict(publisher_signature) if publisher_signature is not None else None,
            bound_inputs=bound,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ManifestError(f"manifest: not valid JSON ({exc})") from exc
        return cls.from_dict(data)


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and validate `manifest.json` from a compiled model directory."""
    path = Path(model_dir) / MANIFEST_FILENAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest here; is this a directory written by tandem-compile?")
    return Manifest.from_json(path.read_bytes())


def _check_object(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: expected an object, got {type(data).__name__}")
    return data


def _req(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in _check_object(data, where):
        raise ManifestError(f"{where}.{key}: required field is missing")
    return data[key]


def _req_str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _req(data, key, where)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _req_list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = _req(data, key, where)
    if not isinstance(value, list):
        raise ManifestError(f"{where}.{key}: expected a list")
    return value


def _req_dict(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = _req(data, key, where)
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}.{key}: expected an object")
    return value


def _opt_list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key)
    if value is not None and not isinstance(value, list):
        raise ManifestError(f"{where}.{key}: expected a list, got {type(value).__name__}")
    return value or []


def _opt_dict(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key)
    if value is not None and not isinstance(value, Mapping):
        raise ManifestError(f"{where}.{key}: expected an object, got {type(value).__name__}")
    return value or {}


def _opt_number(data: Mapping[str, Any], key: str, where: str) -> float | None:
    return _req_number(data, key, where) if data.get(key) is not None else None


def _req_number(data: Mapping[str, Any], key: str, where: str) -> float:
    value = _req(data, key, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(f"{where}.{key}: expected a number, got {value!r}")
    return float(value)
