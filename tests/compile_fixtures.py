"""Compiling a test model for one test profile: the profile texts several suites share (`profile_text`), and the steps
every such compile repeats (profile file, npz data, CompileOptions without timing), in one place."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tandem.model_compiler.pipeline import CompileOptions, CompileResult, Progress, compile_model

ORT_CPU: dict[str, Any] = {"runtime": "onnxruntime", "execution_providers": ["CPUExecutionProvider"]}


def profile_text(
    name: str,
    runtimes: Sequence[Mapping[str, Any]],
    precisions: Sequence[str],
    *,
    description: str,
    cpu_features: Sequence[str] = ("avx2",),
    static_shapes: bool = False,
    **fields: Any,
) -> str:
    """A test profile's YAML: an x86-64 CPU box with roomy budgets, each other top-level field (device_class,
    memory_budget_mb, power_watts...) replaceable through `fields`; `cpu_features=()` leaves them out."""
    data: dict[str, Any] = {
        "name": name,
        "description": description,
        "device_class": "cpu",
        "isa": "x86_64",
        "cpu_features": list(cpu_features),
        "runtimes": [dict(r) for r in runtimes],
        "precisions": list(precisions),
        "memory_budget_mb": 4096,
        "model_size_budget_mb": 500,
        "latency_slo_ms": 20,
        "relative_speed": 1.0,
        "power_watts": {"idle": 15, "active": 65},
        "constraints": {"static_shapes": static_shapes},
    } | fields
    if not cpu_features:
        del data["cpu_features"]
    return yaml.safe_dump(data, sort_keys=False)


# ONNX Runtime FP32 only: the shortest compile that still builds, validates and signs a variant.
ORT_FP32 = profile_text("ort-fp32", [ORT_CPU], ["fp32"], description="test profile, ONNX Runtime FP32 only")

# ONNX Runtime FP32 and INT8: a task's quality gate judged on a quantized variant too.
ORT_TASKS = profile_text(
    "ort-tasks",
    [ORT_CPU],
    ["int8", "fp32"],
    description="test profile, ONNX Runtime FP32 and INT8 only (keeps each compile short)",
    cpu_features=("avx2", "fma", "f16c"),
)

Data = np.ndarray | Mapping[str, np.ndarray] | Path


def write_profile(tmp: Path, text: str) -> str:
    """Write a profile's YAML into tmp/profiles (made if missing); the profile's name."""
    name = str(yaml.safe_load(text)["name"])
    (tmp / "profiles").mkdir(parents=True, exist_ok=True)
    (tmp / "profiles" / f"{name}.yaml").write_text(text)
    return name


def _npz(path: Path, data: Data) -> Path:
    if isinstance(data, Path):
        return data
    np.savez(path, **(dict(data) if isinstance(data, Mapping) else {"x": data}))
    return path


def compile_for_profile(
    tmp: Path,
    profile: str,
    model: Path,
    calib: Data,
    val: Data | None = None,
    *,
    out: Path | None = None,
    signing_key: Path | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> CompileResult:
    """Compile `model` for the one profile whose YAML is `profile` (written into tmp/profiles), calibrated on
    `calib` and validated on `val` (the calibration data when None; arrays go in as input `x`), into
    tmp/out signed with tmp/k.pem unless told otherwise, without timing; `options` go to CompileOptions."""
    name = write_profile(tmp, profile)
    calib_path = _npz(tmp / "calib.npz", calib)
    val_path = calib_path if val is None else _npz(tmp / "val.npz", val)
    opts = CompileOptions(
        model=model,
        profiles=[name],
        calib=calib_path,
        val=val_path,
        out=out or tmp / "out",
        signing_key=signing_key or tmp / "k.pem",
        timing=False,
        profile_dirs=[tmp / "profiles"],
        **options,
    )
    return compile_model(opts, progress)
