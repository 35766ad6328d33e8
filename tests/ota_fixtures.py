"""Model versions for the OTA tests: the real compiler's digits output, and derived releases.

`derive` copies a compiled dir and edits its manifest (version, expiry, profiles,
golden outputs); the hub re-signs whatever it registers, which is what devices trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

PROFILE = "cpu-x86"
MODEL = "digits"


def compile_digits(digits_dir: Path, out: Path, version: str, key: Path, onnx_path: Path | None = None) -> Path:
    from model_compiler.pipeline import CompileOptions, compile_model

    compile_model(CompileOptions(model=onnx_path or digits_dir / "edge.onnx", profiles=[PROFILE],
                                 calib=digits_dir / "calib.npz", val=digits_dir / "val.npz", out=out, name=MODEL,
                                 version=version, signing_key=key, timing=False))
    return out


def collapsed_onnx(digits_dir: Path, out: Path) -> Path:
    """edge.onnx with every weight scaled to ~0: it still runs, its answers are near-uniform (low confidence)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(digits_dir / "edge.onnx"))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array((arr * 1e-3).astype(arr.dtype), init.name))
    onnx.save(model, str(out))
    return out


def _sha(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def derive(src: Path, dst: Path, version: str, edit: Callable[[dict[str, Any], Path], None] | None = None) -> Path:
    """A copy of `src` released as `version`, with `edit(manifest_dict, dir)` applied."""
    shutil.copytree(src, dst)
    path = dst / "manifest.json"
    doc = json.loads(path.read_text())
    doc["version"] = version
    doc.pop("signature", None)
    if edit is not None:
        edit(doc, dst)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    return dst


def scramble_golden(doc: dict[str, Any], root: Path) -> None:
    """Roll the golden outputs by one row: the model is fine, its self-test fails."""
    gpath = root / doc["golden"]["file"]["path"]
    with np.load(gpath) as npz:
        arrays = {k: (np.roll(npz[k], 1, axis=0) if k.startswith("output/") else npz[k]) for k in npz.files}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    gpath.write_bytes(buf.getvalue())
    sha, size = _sha(gpath)
    doc["golden"]["file"].update(sha256=sha, size=size)


def expire(doc: dict[str, Any], root: Path) -> None:
    doc["expires_at"] = "2001-01-01T00:00:00+00:00"


def other_profile(doc: dict[str, Any], root: Path) -> None:
    """Retarget the manifest at cpu-arm only."""
    doc["profiles"] = {"cpu-arm": doc["profiles"][PROFILE]}
    doc["target_profiles"] = ["cpu-arm"]
