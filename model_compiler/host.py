"""What this host's CPU can do, in the profiles' vocabulary (avx2, avx512_vnni, neon, dotprod...).

Reports use it to say why a figure measured here may not carry over to a profile
(e.g. the host has VNNI and the profile does not). Parsing is pure; `read_host` is
the thin shell that reads /proc/cpuinfo.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)

# Linux arm64 /proc/cpuinfo "Features" names -> the names profiles use.
_ARM_ALIASES = {"asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16", "i8mm": "i8mm", "sve": "sve",
                "sve2": "sve2", "bf16": "bf16", "fphp": "fphp"}
_MACHINE_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# Features that decide which INT8 kernels a CPU has (see model_compiler/variants/onnxruntime.py).
INT8_FEATURES = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "dotprod", "i8mm")


@dataclass(frozen=True)
class HostInfo:
    """The host's instruction set and CPU feature flags (profile names)."""

    isa: str
    cpu_features: frozenset[str]

    def has(self, feature: str) -> bool:
        return feature in self.cpu_features

    @property
    def has_vnni(self) -> bool:
        """x86 VNNI (AVX512 or AVX-VNNI): u8 x s8 dot products without VPMADDUBSW saturation."""
        return self.isa == "x86_64" and bool({"avx512_vnni", "avx_vnni"} & self.cpu_features)

    def lacks(self, features: Iterable[str]) -> list[str]:
        """The given features (e.g. a profile's cpu_features) this host does not have."""
        return [f for f in features if f not in self.cpu_features]

    def summary(self) -> str:
        shown = [f for f in INT8_FEATURES + ("avx512_bf16", "f16c", "fma", "fp16") if f in self.cpu_features]
        return f"{self.isa} [{', '.join(shown) or 'no SIMD features found'}]"


def normalize_machine(machine: str) -> str:
    """platform.machine() -> 'x86_64' | 'arm64' | the lower-cased name when unknown."""
    return _MACHINE_ALIASES.get(machine.strip().lower(), machine.strip().lower())


def parse_cpu_features(cpuinfo_text: str, machine: str) -> HostInfo:
    """Features from /proc/cpuinfo text ("flags" on x86, "Features" on arm64)."""
    isa = normalize_machine(machine)
    features: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() not in ("flags", "features"):
            continue
        for flag in value.split():
            flag = flag.strip().lower()
            features.add(_ARM_ALIASES.get(flag, flag) if isa == "arm64" else flag)
        # every core lists the same flags; the first line is enough
        break
    if isa == "arm64":
        features.add("neon")  # Advanced SIMD is mandatory on AArch64
    return HostInfo(isa=isa, cpu_features=frozenset(features))


def read_host(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> HostInfo:
    """This machine's HostInfo; without /proc/cpuinfo (macOS, Windows) only the ISA is known."""
    try:
        text = cpuinfo_path.read_text(errors="replace")
    except OSError as exc:
        logger.info("cannot read %s (%s); CPU features unknown", cpuinfo_path, exc)
        text = ""
    return parse_cpu_features(text, platform.machine())
