"""Load and validate hardware profile files (YAML).

Built-in profiles ship in `hardware_profiles/profiles/`; users add their own by
pointing `TANDEM_PROFILE_PATH` (os.pathsep-separated) or `extra_dirs` at folders of
`*.yaml` files. A user profile with the name of a built-in one replaces it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

BUILTIN_DIR = Path(__file__).parent / "profiles"
PROFILE_PATH_ENV = "TANDEM_PROFILE_PATH"

DEVICE_CLASSES = ("cpu", "gpu", "npu")
RUNTIME_NAMES = ("onnxruntime", "openvino", "litert")
PRECISION_NAMES = ("fp32", "fp16", "bf16", "int8")
ISAS = ("x86_64", "arm64")


class ProfileError(ValueError):
    """A profile file is malformed or unknown; the message names file and field."""


@dataclass(frozen=True)
class RuntimeTarget:
    """One runtime a profile can use, with its execution providers or device."""

    runtime: str
    execution_providers: tuple[str, ...] = ()
    device: str | None = None
    delegates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Constraints:
    static_shapes: bool = False
    int8_only_io: bool = False
    unsupported_ops: tuple[str, ...] = ()
    max_batch: int | None = None


@dataclass(frozen=True)
class Profile:
    """What a class of device runs well, and the figures the simulator emulates."""

    name: str
    description: str
    device_class: str
    isa: str
    cpu_features: tuple[str, ...]
    runtimes: tuple[RuntimeTarget, ...]
    precisions: tuple[str, ...]
    memory_budget_mb: float
    model_size_budget_mb: float
    latency_slo_ms: float
    relative_speed: float
    power_idle_w: float
    power_active_w: float
    constraints: Constraints = field(default_factory=Constraints)
    source: str = ""

    @property
    def runtime_names(self) -> tuple[str, ...]:
        return tuple(r.runtime for r in self.runtimes)

    def runtime_target(self, runtime: str) -> RuntimeTarget | None:
        for target in self.runtimes:
            if target.runtime == runtime:
                return target
        return None

    def allows(self, runtime: str, precision: str) -> bool:
        return runtime in self.runtime_names and precision in self.precisions


def parse_profile(data: Any, source: str = "<memory>") -> Profile:
    """Validate one profile mapping; errors read `FILE: field: problem`."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{source}: a profile file must be a YAML mapping")

    def fail(key: str, problem: str) -> ProfileError:
        return ProfileError(f"{source}: {key}: {problem}")

    def req(key: str) -> Any:
        if key not in data:
            raise fail(key, "required field is missing")
        return data[key]

    def number(key: str, positive: bool = True) -> float:
        value = req(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
            raise fail(key, f"expected a {'positive ' if positive else ''}number, got {value!r}")
        return float(value)

    def choice(key: str, allowed: Iterable[str], value: Any | None = None) -> str:
        value = req(key) if value is None else value
        if value not in allowed:
            raise fail(key, f"{value!r} is not one of {', '.join(allowed)}")
        return str(value)

    def str_list(key: str, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(key, f"expected a list of strings, got {value!r}")
        return tuple(value)

    known = {
        "name",
        "description",
        "device_class",
        "isa",
        "cpu_features",
        "runtimes",
        "precisions",
        "memory_budget_mb",
        "model_size_budget_mb",
        "latency_slo_ms",
        "relative_speed",
        "power_watts",
        "constraints",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise fail(unknown[0], f"unknown field (known fields: {', '.join(sorted(known))})")

    name = req("name")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
        raise fail("name", f"expected letters, digits, '-' or '_', got {name!r}")

    runtimes_raw = req("runtimes")
    if not isinstance(runtimes_raw, list) or not runtimes_raw:
        raise fail("runtimes", "expected a non-empty list, in order of preference")
    runtimes = []
    for i, item in enumerate(runtimes_raw):
        key = f"runtimes[{i}]"
        if not isinstance(item, Mapping) or "runtime" not in item:
            raise fail(key, "expected a mapping with a 'runtime' field")
        runtimes.append(
            RuntimeTarget(
                runtime=choice(f"{key}.runtime", RUNTIME_NAMES, item["runtime"]),
                execution_providers=str_list(f"{key}.execution_providers", item.get("execution_providers")),
                device=item.get("device"),
                delegates=str_list(f"{key}.delegates", item.get("delegates")),
            )
        )

    precisions = str_list("precisions", req("precisions"))
    if not precisions:
        raise fail("precisions", "expected at least one of fp32, fp16, bf16, int8")
    for p in precisions:
        choice("precisions", PRECISION_NAMES, p)

    power = data.get("power_watts", {}) or {}
    if not isinstance(power, Mapping):
        raise fail("power_watts", "expected a mapping with 'idle' and 'active'")
    cons = data.get("constraints", {}) or {}
    if not isinstance(cons, Mapping):
        raise fail("constraints", "expected a mapping")
    max_batch = cons.get("max_batch")
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise fail("constraints.max_batch", f"expected a positive integer, got {max_batch!r}")

    return Profile(
        name=name,
        description=str(data.get("description", "")),
        device_class=choice("device_class", DEVICE_CLASSES),
        isa=choice("isa", ISAS),
        cpu_features=str_list("cpu_features", data.get("cpu_features")),
        runtimes=tuple(runtimes),
        precisions=precisions,
        memory_budget_mb=number("memory_budget_mb"),
        model_size_budget_mb=number("model_size_budget_mb"),
        latency_slo_ms=number("latency_slo_ms"),
        relative_speed=number("relative_speed"),
        power_idle_w=float(power.get("idle", 0.0)),
        power_active_w=float(power.get("active", 0.0)),
        constraints=Constraints(
            static_shapes=bool(cons.get("static_shapes", False)),
            int8_only_io=bool(cons.get("int8_only_io", False)),
            unsupported_ops=str_list("constraints.unsupported_ops", cons.get("unsupported_ops")),
            max_batch=max_batch,
        ),
        source=source,
    )


def load_profile_file(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({exc})") from exc
    profile = parse_profile(data, str(path))
    if path.stem != profile.name:
        raise ProfileError(f"{path}: name: {profile.name!r} must match the file name {path.stem!r}")
    return profile


def profile_dirs(extra_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """Built-in folder first, then TANDEM_PROFILE_PATH, then `extra_dirs` (later wins)."""
    dirs = [BUILTIN_DIR]
    env = os.environ.get(PROFILE_PATH_ENV, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra_dirs]
    return dirs


def load_profiles(extra_dirs: Iterable[str | Path] = ()) -> dict[str, Profile]:
    """All known profiles by name."""
    profiles: dict[str, Profile] = {}
    for folder in profile_dirs(extra_dirs):
        if not folder.is_dir():
            raise ProfileError(f"{folder}: profile folder does not exist")
        for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
            profile = load_profile_file(path)
            profiles[profile.name] = profile
    return profiles


def get_profile(name: str, extra_dirs: Iterable[str | Path] = ()) -> Profile:
    profiles = load_profiles(extra_dirs)
    if name not in profiles:
        raise ProfileError(f"unknown profile {name!r}; known profiles: {', '.join(sorted(profiles))}")
    return profiles[name]


def resolve_profiles(names: Iterable[str], extra_dirs: Iterable[str | Path] = ()) -> list[Profile]:
    """Profiles for a comma-list from the command line, with one clear error for all unknown names."""
    profiles = load_profiles(extra_dirs)
    wanted = [n.strip() for n in names if n.strip()]
    missing = [n for n in wanted if n not in profiles]
    if missing:
        raise ProfileError(f"unknown profile(s) {', '.join(missing)}; known profiles: {', '.join(sorted(profiles))}")
    return [profiles[n] for n in wanted]
