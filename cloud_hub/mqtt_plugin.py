"""Build the Mosquitto plugin that binds MQTT client ids to client certificates.

The C source (mosquitto_plugin/tandem_identity.c) ships with the package and is compiled once
per source version into the broker's private work folder, so nothing outside the 0700 folder a
root Mosquitto reads from can replace the code it loads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tandem.cloud_hub.errors import HubError

SOURCE = Path(__file__).resolve().parent / "mosquitto_plugin" / "tandem_identity.c"
COMPILE_TIMEOUT_S = 120


class PluginBuildError(HubError):
    """The identity plugin could not be built (no C compiler, or it failed)."""


def build_identity_plugin(workdir: Path) -> Path:
    """The plugin's .so under `workdir` (built now unless this source version is already there)."""
    source = SOURCE.read_bytes()
    target = workdir / f"tandem_identity-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if target.is_file():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise PluginBuildError(
            "mutual TLS on MQTT binds each client id to its certificate with a small Mosquitto plugin "
            f"({SOURCE}), which needs a C compiler to build: install one (e.g. `apt-get install gcc`)"
        )
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    try:
        done = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PluginBuildError(f"building the Mosquitto identity plugin with {compiler} failed: {exc}") from None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise PluginBuildError(
            f"building the Mosquitto identity plugin with {compiler} failed: {done.stderr.strip()[-400:]}"
        )
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
    return target
