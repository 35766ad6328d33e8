"""What this host's CPU can do, in the profiles' vocabulary (avx2, avx512_vnni, neon, dotprod...).

Reports use it to say why a figure measured here may not carry over to a profile
(e.g. the host has VNNI and the profile does not). Parsing is pure; `read_host` is
the thin shell that reads /proc/cpuinfo.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tandem.hardware_profiles.probe import cpu_flags, normalize_machine, read_cpuinfo

__all__ = ["BF16_FEATURES", "INT8_FEATURES", "HostInfo", "normalize_machine", "parse_cpu_features", "read_host"]

# Features that decide which INT8 kernels a CPU has (see model_compiler/variants/onnxruntime.py).
INT8_FEATURES = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "dotprod", "i8mm")
# Features with native bf16 math on x86 (OpenVINO's CPU plugin runs INFERENCE_PRECISION_HINT=bf16 only
# with one of them; without, it keeps f32). AMX-BF16 comes with AVX512-BF16 on every CPU that has it.
BF16_FEATURES = ("avx512_bf16", "amx_bf16")


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

    @property
    def has_bf16(self) -> bool:
        """x86 bf16 math (AVX512-BF16 or AMX-BF16): what makes OpenVINO's bf16 variant differ from f32."""
        return self.isa == "x86_64" and bool(set(BF16_FEATURES) & self.cpu_features)

    def lacks(self, features: Iterable[str]) -> list[str]:
        """The given features (e.g. a profile's cpu_features) this host does not have."""
        return [f for f in features if f not in self.cpu_features]

    def summary(self) -> str:
        shown = [f for f in INT8_FEATURES + BF16_FEATURES + ("f16c", "fma", "fp16") if f in self.cpu_features]
        return f"{self.isa} [{', '.join(shown) or 'no SIMD features found'}]"


def parse_cpu_features(cpuinfo_text: str, machine: str) -> HostInfo:
    """Features from /proc/cpuinfo text (parsed where the agent's capability probe parses it)."""
    isa, flags = cpu_flags(cpuinfo_text, machine)
    return HostInfo(isa=isa, cpu_features=flags)


def read_host(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> HostInfo:
    """This machine's HostInfo; without /proc/cpuinfo (macOS, Windows) only the ISA is known."""
    return parse_cpu_features(read_cpuinfo(cpuinfo_path), platform.machine())
