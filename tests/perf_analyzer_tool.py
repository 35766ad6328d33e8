"""Triton's perf_analyzer (the C++ load generator in the tritonclient wheel) found, checked and run.

The wheel puts the binary beside the venv's python; it links libb64 (Debian's libb64-0d, which
`make system-deps` installs) and libcudart.so.12 even for CPU-only gRPC runs (the PyPI wheel
nvidia-cuda-runtime-cu12 of the dev extra carries it; its folder goes on LD_LIBRARY_PATH).
Shared by tests/test_perf_analyzer.py and bench/perf_analyzer.py.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PerfAnalyzer:
    """The binary and the environment it runs in."""

    binary: Path
    env: dict[str, str] = field(repr=False)


def _cudart_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        return None
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    for folder in folders:
        lib = Path(folder) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def locate() -> PerfAnalyzer | str:
    """The runnable perf_analyzer, or a sentence saying what is missing and how to get it."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    if not binary.exists():
        return "perf_analyzer not installed (the tritonclient wheel of the dev extra carries it)"
    env = dict(os.environ)
    cudart = _cudart_dir()
    if cudart is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p)
    try:
        ldd = subprocess.run(["ldd", str(binary.resolve())], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"perf_analyzer's libraries could not be checked (ldd: {exc})"
    absent = [line.split("=>")[0].strip() for line in ldd.stdout.splitlines() if "not found" in line]
    if absent:
        hints = {"libb64.so.0d": "apt libb64-0d (make system-deps)", "libcudart.so.12": "pip nvidia-cuda-runtime-cu12"}
        named = ", ".join(f"{lib} ({hints.get(lib, 'unknown package')})" for lib in absent)
        return f"perf_analyzer's libraries not installed: {named}"
    return PerfAnalyzer(binary, env)


@dataclass(frozen=True)
class Measurement:
    """One concurrency level as perf_analyzer reports it (its CSV: -f)."""

    concurrency: int
    infer_per_s: float
    p50_us: int
    p90_us: int
    p99_us: int
    server_queue_us: int


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer exited non-zero; the message carries its last lines."""


def run(
    tool: PerfAnalyzer,
    url: str,
    model: str,
    shape: str,
    out_csv: Path,
    *,
    version: str = "",
    concurrency: str = "1",
    window_ms: int = 1000,
    stability_pct: int = 50,
    max_trials: int = 5,
    timeout_s: float = 120.0,
) -> list[Measurement]:
    """Drive a v2 gRPC server at `url` (host:port) and return perf_analyzer's own figures per concurrency.

    `shape` is perf_analyzer's --shape (e.g. "x:4"); `version` empty lets perf_analyzer pick the model's
    version from the server's statistics, as it does by default. perf_analyzer repeats a window
    until `max_trials` windows agree within `stability_pct` percent (a large value accepts the
    first windows: what a test on a loaded machine wants).
    """
    cmd = [str(tool.binary), "-m", model, "-u", url, "-i", "grpc", "--shape", shape]
    cmd += [
        "-p",
        str(window_ms),
        "--concurrency-range",
        concurrency,
        "-r",
        str(max_trials),
        "-s",
        str(stability_pct),
        "-f",
        str(out_csv),
    ]
    if version:
        cmd += ["-x", version]
    proc = subprocess.run(cmd, env=tool.env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        raise PerfAnalyzerError(f"perf_analyzer exited {proc.returncode}: {tail}")
    with out_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        Measurement(
            concurrency=int(row["Concurrency"]),
            infer_per_s=float(row["Inferences/Second"]),
            p50_us=int(row["p50 latency"]),
            p90_us=int(row["p90 latency"]),
            p99_us=int(row["p99 latency"]),
            server_queue_us=int(row["Server Queue"]),
        )
        for row in rows
    ]
