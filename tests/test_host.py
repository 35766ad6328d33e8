"""Host CPU feature parsing: /proc/cpuinfo text in, profile-vocabulary features out."""

from __future__ import annotations

import platform

from tandem.model_compiler.host import HostInfo, normalize_machine, parse_cpu_features, read_host

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx avx2 fma f16c avx512f avx512_vnni avx512_bf16
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 fma f16c avx512f avx512_vnni avx512_bf16
"""

X86_NO_VNNI = "flags : fpu sse2 avx avx2 fma f16c\n"

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_x86_flags_become_features_and_vnni_is_detected():
    host = parse_cpu_features(X86_CPUINFO, "x86_64")
    assert host.isa == "x86_64"
    assert {"avx2", "fma", "f16c", "avx512_vnni", "avx512_bf16"} <= host.cpu_features
    assert host.has_vnni
    assert "bugs" not in " ".join(host.cpu_features)


def test_x86_without_vnni_says_so_and_names_what_a_profile_needs_but_host_lacks():
    host = parse_cpu_features(X86_NO_VNNI, "AMD64")
    assert host.isa == "x86_64" and not host.has_vnni
    assert host.lacks(["avx2", "avx512_vnni", "avx_vnni"]) == ["avx512_vnni", "avx_vnni"]


def test_arm_features_use_profile_names():
    host = parse_cpu_features(ARM_CPUINFO, "aarch64")
    assert host.isa == "arm64"
    assert {"neon", "dotprod", "fp16"} <= host.cpu_features
    assert "asimddp" not in host.cpu_features
    assert not host.has_vnni  # VNNI is an x86 notion


def test_arm_without_cpuinfo_still_has_neon_and_unknown_machines_pass_through():
    assert parse_cpu_features("", "arm64").cpu_features == frozenset({"neon"})
    host = parse_cpu_features("", "riscv64")
    assert host.isa == "riscv64" and host.cpu_features == frozenset()
    assert normalize_machine(" X86_64 ") == "x86_64"


def test_summary_lists_int8_relevant_features():
    text = parse_cpu_features(X86_CPUINFO, "x86_64").summary()
    assert text.startswith("x86_64") and "avx512_vnni" in text and "sse2" not in text
    assert "no SIMD" in HostInfo("x86_64", frozenset()).summary()


def test_read_host_reads_this_machine(tmp_path):
    host = read_host()
    assert host.isa == normalize_machine(platform.machine())
    missing = read_host(tmp_path / "no-cpuinfo")
    assert missing.isa == host.isa
