"""What the bench scripts share: the repository on sys.path, progress lines on stderr, loading an
example's module by its path (examples/ is not a package), and the host a figure was measured on."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import platform
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def add_paths(*folders: Path) -> None:
    """Put the repository (and `folders`, e.g. examples/digits) first on sys.path, once each."""
    for folder in (ROOT, *folders):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def log(message: str) -> None:
    """A progress line on stderr, so stdout carries only the result (a table or --json)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def import_path(name: str, path: Path) -> ModuleType:
    """Load the module at `path` under `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_info() -> dict[str, Any]:
    """The host beside every figure: CPU features (AVX-512, VNNI, AMX...), cores, load average, date."""
    from tandem.model_compiler.host import read_host

    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_features": sorted(read_host().cpu_features),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
