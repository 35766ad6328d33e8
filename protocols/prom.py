"""Prometheus exposition, both formats: text 0.0.4 and OpenMetrics 1.0, chosen by the scraper's Accept header.

The agent and the hub build `Family` values and render them here, so naming rules
(counters end in `_total`; OpenMetrics names the counter family without it), label
escaping, `# EOF` and content types live in one place. No client library: the agent
stays small. `process_families()` adds the standard process_* metrics on Linux.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

__all__ = [
    "Family",
    "Labels",
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "TYPES",
    "process_families",
    "render",
    "wants_openmetrics",
]

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TYPES = ("counter", "gauge", "histogram", "info")

Labels = Mapping[str, str]


@dataclass
class Family:
    """One metric family. Counter names end in `_total`; an info family's name ends in `_info`."""

    name: str
    type: str
    help: str
    samples: list[tuple[str, dict[str, str], float | str]] = field(default_factory=list)  # (suffix, labels, value)

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"metric {self.name}: type {self.type!r} is not one of {TYPES}")
        if self.type == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name} must end in _total")
        if self.type != "counter" and self.name.endswith("_total"):
            raise ValueError(f"{self.type} {self.name} must not end in _total (only counters do)")
        if self.type == "info" and not self.name.endswith("_info"):
            raise ValueError(f"info metric {self.name} must end in _info")

    def add(self, value: float | str, labels: Labels | None = None, suffix: str = "") -> "Family":
        """One sample; a str value is written as given (a fixed-precision ratio, say)."""
        self.samples.append((suffix, dict(labels or {}), value if isinstance(value, str) else float(value)))
        return self

    def histogram(
        self, bounds: Sequence[float], counts: Sequence[int], total: float, labels: Labels | None = None
    ) -> "Family":
        """Add one histogram series: per-bucket (not cumulative) `counts`, len(bounds) or +1 for the overflow."""
        base = dict(labels or {})
        cumulative = 0
        for bound, count in zip(bounds, counts):
            cumulative += count
            self.samples.append(("_bucket", {**base, "le": repr(float(bound))}, cumulative))
        n = sum(counts)
        self.samples.append(("_bucket", {**base, "le": "+Inf"}, n))
        self.samples.append(("_sum", base, total))
        self.samples.append(("_count", base, n))
        return self


def wants_openmetrics(accept: str | None) -> bool:
    """True when the scraper asks for OpenMetrics (Prometheus does first, then falls back to text)."""
    return accept is not None and "application/openmetrics-text" in accept


def render(families: Iterable[Family], openmetrics: bool = False) -> str:
    """The exposition text; a family with no samples is left out (promtool flags empty families)."""
    lines: list[str] = []
    for family in families:
        if not family.samples:
            continue
        name = family.name
        kind = family.type
        if openmetrics:
            if kind == "counter":
                name = name[: -len("_total")]
            elif kind == "info":
                name = name[: -len("_info")]
        elif kind == "info":
            kind = "gauge"  # text 0.0.4 has no info type: a gauge of 1 with the labels
        lines.append(f"# HELP {name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in family.samples:
            lines.append(f"{family.name}{suffix}{_labels(labels)} {_float(value)}")
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def process_families(prefix: str = "process") -> list[Family]:
    """process_cpu_seconds_total, memory, open fds, start time: what every Prometheus target exports."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = [
        Family(f"{prefix}_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.").add(
            usage.ru_utime + usage.ru_stime
        )
    ]
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        page = resource.getpagesize()
        with open("/proc/stat", "rb") as fh:
            boot = next(float(line.split()[1]) for line in fh if line.startswith(b"btime"))
        out.append(
            Family(f"{prefix}_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.").add(float(stat[20]))
        )
        out.append(
            Family(f"{prefix}_resident_memory_bytes", "gauge", "Resident memory size in bytes.").add(
                float(stat[21]) * page
            )
        )
        out.append(
            Family(f"{prefix}_start_time_seconds", "gauge", "Start time of the process since the epoch.").add(
                boot + float(stat[19]) / ticks
            )
        )
        out.append(
            Family(f"{prefix}_open_fds", "gauge", "Number of open file descriptors.").add(
                len(os.listdir("/proc/self/fd"))
            )
        )
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        out.append(Family(f"{prefix}_max_fds", "gauge", "Maximum number of open file descriptors.").add(soft))
    except (OSError, ValueError, IndexError, StopIteration):  # not Linux: CPU time only
        pass
    return out


def _float(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"
