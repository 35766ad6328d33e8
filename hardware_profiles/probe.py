"""What this device really has: runtimes' execution providers and devices, LiteRT
delegates, CPU features; and which of a profile's runtime targets can run here.

Parsing and the target check are pure; the probes are thin and guarded, so a missing
or broken runtime is reported (in `problems`), never raised. `python -m
hardware_profiles.probe` prints the probe as JSON.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from tandem.hardware_profiles.loader import RuntimeTarget

log = logging.getLogger(__name__)

TIERS = ("npu", "gpu", "cpu")  # best first: the fallback chain runs down this list

# Linux arm64 /proc/cpuinfo "Features" names -> the names profiles use.
# arm64 /proc/cpuinfo names -> the names profiles use (x86 flags are used as they are)
_ARM_ALIASES = {"asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16"}
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# The features that decide which kernels run fast (INT8 dot products, FP16, wide vectors).
REPORTED_CPU_FEATURES = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "neon",
    "dotprod",
    "i8mm",
    "fp16",
    "sve",
    "sve2",
)

# ONNX Runtime execution providers by the tier of hardware they run on.
_EP_TIERS = {
    "TensorrtExecutionProvider": "gpu",
    "CUDAExecutionProvider": "gpu",
    "ROCMExecutionProvider": "gpu",
    "MIGraphXExecutionProvider": "gpu",
    "DmlExecutionProvider": "gpu",
    "WebGpuExecutionProvider": "gpu",
    "QNNExecutionProvider": "npu",
    "VitisAIExecutionProvider": "npu",
    "CoreMLExecutionProvider": "npu",
    "NnapiExecutionProvider": "npu",
    "RknpuExecutionProvider": "npu",
    "OpenVINOExecutionProvider": "npu",
    "CPUExecutionProvider": "cpu",
    "XnnpackExecutionProvider": "cpu",
    "ACLExecutionProvider": "cpu",
    "DnnlExecutionProvider": "cpu",
    "AzureExecutionProvider": "cpu",
}
# LiteRT delegate libraries by file-name fragment -> (delegate name, tier).
_DELEGATE_FILES = {
    "libedgetpu": ("edgetpu", "npu"),
    "libvx_delegate": ("vx", "npu"),
    "libqnntflitedelegate": ("qnn", "npu"),
    "libethosu_delegate": ("ethos-u", "npu"),
    "libneuron": ("neuron", "npu"),
    "libarmnndelegate": ("armnn", "npu"),
    "libtensorflowlite_gpu_delegate": ("gpu", "gpu"),
    "libtensorflowlite_hexagon": ("hexagon", "npu"),
}
_DELEGATE_DIRS = ("/usr/lib", "/usr/lib/*-linux-gnu", "/usr/local/lib", "/usr/lib64")
# Delegate names profiles use that stand for a tier rather than one library.
_DELEGATE_TIERS = {"npu": "npu", "gpu": "gpu", "xnnpack": "cpu", "cpu": "cpu"}
BUILTIN_LITERT_DELEGATES = ("xnnpack",)  # compiled into the LiteRT interpreter


@dataclass(frozen=True)
class DeviceProbe:
    """One device's capabilities; None for a runtime means it is not usable here (see `problems`)."""

    isa: str
    cpu_features: tuple[str, ...] = ()
    onnxruntime_providers: tuple[str, ...] | None = None
    openvino_devices: tuple[str, ...] | None = None
    litert_module: str | None = None  # "ai_edge_litert" or "tflite_runtime"
    litert_delegates: tuple[str, ...] = ()  # delegates whose library was found (plus the built-in ones)
    delegate_files: tuple[str, ...] = ()
    problems: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def runtime_present(self, runtime: str) -> bool:
        return {
            "onnxruntime": self.onnxruntime_providers is not None,
            "openvino": self.openvino_devices is not None,
            "litert": self.litert_module is not None,
        }.get(runtime, False)

    def summary(self) -> dict:
        """The short form status and telemetry report."""
        return {
            "isa": self.isa,
            "cpu_features": list(self.cpu_features),
            "onnxruntime": list(self.onnxruntime_providers) if self.onnxruntime_providers is not None else None,
            "openvino": list(self.openvino_devices) if self.openvino_devices is not None else None,
            "litert": list(self.litert_delegates) if self.litert_module else None,
        }


# -- pure parsing ------------------------------------------------------------------------


def normalize_machine(machine: str) -> str:
    return _MACHINES.get(machine.strip().lower(), machine.strip().lower())


def cpu_flags(cpuinfo_text: str, machine: str) -> tuple[str, frozenset[str]]:
    """(isa, every CPU flag) from /proc/cpuinfo ("flags" on x86, "Features" on arm64, arm names aliased)."""
    isa = normalize_machine(machine)
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags = {_ARM_ALIASES.get(f, f) if isa == "arm64" else f for f in value.lower().split()}
            break  # every core lists the same flags
    if isa == "arm64":
        flags.add("neon")  # Advanced SIMD is mandatory on AArch64
    return isa, frozenset(flags)


def parse_cpu_features(cpuinfo_text: str, machine: str) -> tuple[str, tuple[str, ...]]:
    """(isa, the REPORTED_CPU_FEATURES present) from /proc/cpuinfo."""
    isa, flags = cpu_flags(cpuinfo_text, machine)
    return isa, tuple(f for f in REPORTED_CPU_FEATURES if f in flags)


def read_cpuinfo(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> str:
    """/proc/cpuinfo's text, or "" where there is none (macOS, Windows): features then read as unknown."""
    try:
        return cpuinfo_path.read_text(errors="replace")
    except OSError as exc:
        log.info("cannot read %s (%s); CPU features unknown", cpuinfo_path, exc)
        return ""


def provider_tier(provider: str) -> str:
    """The tier an ONNX Runtime execution provider runs on (unknown ones count as GPU-class accelerators)."""
    return _EP_TIERS.get(provider, "gpu")


def openvino_tier(device: str) -> str:
    """NPU, GPU / GPU.1, CPU; AUTO / HETERO:GPU,CPU / MULTI:... take their first listed device."""
    head = device.split(":", 1)[-1].split(",")[0] if ":" in device else device
    name = head.split(".")[0].upper()
    return {"NPU": "npu", "GPU": "gpu", "CPU": "cpu"}.get(name, "cpu" if name == "AUTO" else "gpu")


def delegate_tier(delegate: str) -> str:
    for _, (name, tier) in _DELEGATE_FILES.items():
        if name == delegate:
            return tier
    return _DELEGATE_TIERS.get(delegate, "npu")


def delegates_from_files(paths: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(delegate names, the matching files) from library paths found on disk."""
    names: list[str] = []
    files: list[str] = []
    for path in paths:
        base = os.path.basename(path).lower()
        for fragment, (name, _) in _DELEGATE_FILES.items():
            if base.startswith(fragment) and ".so" in base:
                files.append(path)
                if name not in names:
                    names.append(name)
    return tuple(names), tuple(files)


def openvino_device_present(device: str, devices: Iterable[str]) -> bool:
    """`GPU` matches GPU or GPU.0; AUTO and HETERO/MULTI need one of their devices."""
    have = {d.upper() for d in devices}
    if device.upper() == "AUTO":
        return bool(have)
    wanted = device.split(":", 1)[1].split(",") if ":" in device else [device]
    return any(w.upper() in have or any(h.split(".")[0] == w.upper() for h in have) for w in wanted)


@dataclass(frozen=True)
class Placement:
    """Where one runtime runs a variant: a tier and the session options that put it there."""

    runtime: str
    tier: str
    options: dict = field(default_factory=dict)  # device= (OpenVINO), providers= (ONNX Runtime)
    delegates: tuple[str, ...] = ()  # LiteRT delegates this placement needs

    @property
    def label(self) -> str:
        where = (
            self.options.get("device")
            or ",".join(self.options.get("providers", ()))
            or ",".join(self.delegates)
            or "CPU"
        )
        return f"{self.runtime}@{where}"


def placements(target: RuntimeTarget | None, runtime: str) -> list[Placement]:
    """A runtime target's placements, best tier first, always ending on the CPU (NPU -> GPU -> CPU).

    Without a target (the profile does not list `runtime`), only the CPU placement.
    """
    if target is None:
        target = RuntimeTarget(runtime=runtime)
    out: list[Placement] = []
    if runtime == "onnxruntime":
        for tier in TIERS[:-1]:
            eps = [p for p in target.execution_providers if provider_tier(p) == tier]
            if eps:  # CPU stays listed: ORT runs the nodes an accelerator provider cannot on it
                out.append(Placement(runtime, tier, {"providers": eps + ["CPUExecutionProvider"]}))
        cpu_eps = [p for p in target.execution_providers if provider_tier(p) == "cpu"] or ["CPUExecutionProvider"]
        out.append(Placement(runtime, "cpu", {"providers": cpu_eps}))
    elif runtime == "openvino":
        device = target.device or "CPU"
        if openvino_tier(device) != "cpu":
            out.append(Placement(runtime, openvino_tier(device), {"device": device}))
        out.append(Placement(runtime, "cpu", {"device": "CPU" if openvino_tier(device) != "cpu" else device}))
    else:
        for tier in TIERS[:-1]:
            wanted = tuple(d for d in target.delegates if delegate_tier(d) == tier)
            if wanted:
                out.append(Placement(runtime, tier, {}, wanted))
        out.append(Placement(runtime, "cpu", {}, ("xnnpack",)))
    return sorted(out, key=lambda p: TIERS.index(p.tier))


def placement_available(
    placement: Placement, probe: DeviceProbe, loadable_delegates: Iterable[str] = BUILTIN_LITERT_DELEGATES
) -> tuple[bool, str]:
    """Can `placement` run on this device? (yes/no, and why, in the probe's words).

    `loadable_delegates`: the LiteRT delegates the session adapter can attach.
    """
    rt = placement.runtime
    if not probe.runtime_present(rt):
        return False, f"{rt} is not usable here ({probe.problems.get(rt, 'not installed')})"
    if rt == "onnxruntime":
        wanted = [p for p in placement.options.get("providers", ()) if provider_tier(p) == placement.tier]
        have = [p for p in wanted if p in (probe.onnxruntime_providers or ())]
        if have:
            return True, f"ONNX Runtime has {', '.join(have)}"
        return False, (
            f"ONNX Runtime lacks {', '.join(wanted) or 'a ' + placement.tier.upper() + ' provider'} "
            f"(has {', '.join(probe.onnxruntime_providers or ()) or 'none'})"
        )
    if rt == "openvino":
        device = placement.options.get("device", "CPU")
        if openvino_device_present(device, probe.openvino_devices or ()):
            return True, f"OpenVINO device {device} present"
        return False, f"OpenVINO has no {device} device (has {', '.join(probe.openvino_devices or ()) or 'none'})"
    if placement.tier == "cpu":
        return True, f"LiteRT ({probe.litert_module}) with its built-in XNNPACK"
    found = [
        d for d in probe.litert_delegates if delegate_tier(d) == placement.tier and d not in BUILTIN_LITERT_DELEGATES
    ]
    if not found:
        return False, (
            f"no LiteRT {placement.tier.upper()} delegate library found "
            f"(profile wants {', '.join(placement.delegates)})"
        )
    loadable = [d for d in found if d in set(loadable_delegates)]
    if not loadable:
        return False, (
            f"LiteRT delegate {', '.join(found)} found, but the LiteRT adapter attaches only "
            f"{', '.join(loadable_delegates)}"
        )
    return True, f"LiteRT delegate {', '.join(loadable)}"


# -- thin probes -------------------------------------------------------------------------------


def probe_cpu(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> tuple[str, tuple[str, ...]]:
    return parse_cpu_features(read_cpuinfo(cpuinfo_path), platform.machine())


def probe_onnxruntime() -> tuple[tuple[str, ...] | None, str | None]:
    try:
        import onnxruntime as ort

        return tuple(ort.get_available_providers()), None
    except Exception as exc:  # ImportError, or a broken install failing at import
        return None, f"{type(exc).__name__}: {exc}"


def probe_openvino() -> tuple[tuple[str, ...] | None, str | None]:
    try:
        from tandem.hardware_profiles.runtimes.openvino import _get_core  # the adapter's cached Core

        return tuple(_get_core().available_devices), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def probe_litert(
    search_dirs: Iterable[str] = _DELEGATE_DIRS,
) -> tuple[str | None, tuple[str, ...], tuple[str, ...], str | None]:
    """(module, delegates, delegate files, problem); finds the module without importing it."""
    module = None
    for name in ("ai_edge_litert", "tflite_runtime"):
        try:
            if importlib.util.find_spec(name) is not None:
                module = name
                break
        except (ImportError, ValueError):
            continue
    paths: list[str] = []
    dirs = list(search_dirs)
    if module is not None:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            dirs += list(spec.submodule_search_locations)
    for folder in dirs:
        for match in glob.glob(folder):
            paths += glob.glob(os.path.join(match, "lib*.so*"))
    names, files = delegates_from_files(sorted(set(paths)))
    problem = None if module else "neither ai_edge_litert nor tflite_runtime is installed"
    delegates = (BUILTIN_LITERT_DELEGATES + names) if module else names
    return module, delegates, files, problem


def probe_device(runtimes: Iterable[str] | None = None) -> DeviceProbe:
    """Probe this device; `runtimes` limits which runtimes are probed (the others report 'not probed')."""
    wanted = set(runtimes) if runtimes is not None else {"onnxruntime", "openvino", "litert"}
    isa, features = probe_cpu()
    problems: dict[str, str] = {}
    ort_eps = ov_devices = None
    litert_module: str | None = None
    delegates: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    if "onnxruntime" in wanted:
        ort_eps, problem = probe_onnxruntime()
        if problem:
            problems["onnxruntime"] = problem
    else:
        problems["onnxruntime"] = "not probed"
    if "openvino" in wanted:
        ov_devices, problem = probe_openvino()
        if problem:
            problems["openvino"] = problem
    else:
        problems["openvino"] = "not probed"
    if "litert" in wanted:
        litert_module, delegates, files, problem = probe_litert()
        if problem:
            problems["litert"] = problem
    else:
        problems["litert"] = "not probed"
    return DeviceProbe(
        isa=isa,
        cpu_features=features,
        onnxruntime_providers=ort_eps,
        openvino_devices=ov_devices,
        litert_module=litert_module,
        litert_delegates=delegates,
        delegate_files=files,
        problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m hardware_profiles.probe",
        description="Print what this device has (runtimes, devices, delegates, CPU features) as JSON.",
    )
    parser.add_argument(
        "--runtime",
        action="append",
        choices=["onnxruntime", "openvino", "litert"],
        help="probe only this runtime (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    print(json.dumps(probe_device(args.runtime).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
