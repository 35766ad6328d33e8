"""The models a simulation serves: the digits edge model compiled for the fleet's profiles, the
cloud model for the hub, and derived releases for rollouts (good, bad, failing self-test).

Everything is built locally from examples/digits/train.py (no downloads) and cached
under the models dir, keyed by the profile set.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from tandem.protocols.npz import read_npz

log = logging.getLogger(__name__)

EDGE_MODEL = "digits"
CLOUD_MODEL = "digits-cloud"
BASE_VERSION = "1.0.0"
RELEASES = {"good": "1.1.0", "bad": "1.2.0", "selftest_fail": "1.3.0"}


@dataclass(frozen=True)
class Models:
    data_dir: Path  # edge.onnx, cloud.onnx, calib/val/test.npz
    edge: Path  # compiled digits 1.0.0 for the fleet's profiles
    cloud: Path  # compiled digits-cloud for the hub
    root: Path

    @property
    def publisher_key(self) -> Path:
        """The sim's publisher key (private PEM) that signs every compiled and derived folder."""
        return self.root / "sim-compiler.pem"

    @property
    def publisher_pem(self) -> str:
        """Its public half: the hub and the agents trust it (tandem-hub publishers add, trust.keys)."""
        from tandem.protocols.signing import load_private_key, public_key_pem

        return public_key_pem(load_private_key(self.publisher_key)).decode("ascii")

    def release(self, kind: str) -> Path:
        """The compiled dir of release `kind` (good, bad, selftest_fail), built on first use."""
        if kind not in RELEASES:
            raise ValueError(f"release {kind!r} is not one of {', '.join(RELEASES)}")
        version = RELEASES[kind]
        out = self.root / f"{EDGE_MODEL}-{version}"
        if (out / "manifest.json").exists() and "signature" in json.loads((out / "manifest.json").read_text()):
            return out
        shutil.rmtree(out, ignore_errors=True)  # an unsigned one cached by an older Tandem: build it again
        if kind == "good":
            return derive(self.edge, out, version, key=self.publisher_key)
        if kind == "selftest_fail":
            return derive(self.edge, out, version, scramble_golden, key=self.publisher_key)
        profiles = list(json.loads((self.edge / "manifest.json").read_text())["target_profiles"])
        collapsed = collapsed_onnx(self.data_dir / "edge.onnx", self.root / "collapsed.onnx")
        return _compile(collapsed, self.data_dir, out, EDGE_MODEL, version, profiles, self.root / "sim-compiler.pem")


def train_digits(out: Path) -> Path:
    """examples/digits/train.py into `out` (skipped when already there)."""
    if (out / "edge.onnx").exists() and (out / "test.npz").exists():
        return out
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "digits"))
    import train  # examples/digits/train.py

    train.train(out)
    return out


def _compile(
    onnx_path: Path, data_dir: Path, out: Path, name: str, version: str, profiles: list[str], key: Path
) -> Path:
    from tandem.model_compiler.pipeline import CompileOptions, compile_model

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    compile_model(
        CompileOptions(
            model=onnx_path,
            profiles=profiles,
            calib=data_dir / "calib.npz",
            val=data_dir / "val.npz",
            out=tmp,
            name=name,
            version=version,
            signing_key=key,
            timing=False,
            force=True,
        )
    )
    tmp.rename(out)
    return out


def prepare(
    root: Path, profiles: Iterable[str], data_dir: Path | None = None, say: Callable[[str], None] = lambda m: None
) -> Models:
    """Train (if needed) and compile the edge model for `profiles` and the cloud model; cached."""
    root.mkdir(parents=True, exist_ok=True)
    if data_dir is None:
        data_dir = root / "data"
        if not (data_dir / "edge.onnx").exists():
            say(f"training the digits models into {data_dir}")
        train_digits(data_dir)
    wanted = sorted(set(profiles))
    tag = hashlib.sha256(",".join(wanted).encode()).hexdigest()[:8]
    root = root / f"set-{tag}"
    root.mkdir(exist_ok=True)
    key = root / "sim-compiler.pem"
    edge = root / f"{EDGE_MODEL}-{BASE_VERSION}"
    if not (edge / "manifest.json").exists():
        say(f"compiling digits for {', '.join(wanted)}")
        _compile(data_dir / "edge.onnx", data_dir, edge, EDGE_MODEL, BASE_VERSION, wanted, key)
    cloud = root / CLOUD_MODEL
    if not (cloud / "manifest.json").exists():
        say("compiling digits-cloud for the hub (cpu-x86)")
        _compile(data_dir / "cloud.onnx", data_dir, cloud, CLOUD_MODEL, BASE_VERSION, ["cpu-x86"], key)
    return Models(data_dir, edge, cloud, root)


def derive(
    src: Path, dst: Path, version: str, edit: Callable[[dict[str, Any], Path], None] | None = None, *, key: Any = None
) -> Path:
    """A copy of `src` released as `version`, with `edit(manifest, dir)` applied, signed again by the publisher
    `key` (None: left unsigned, which a hub refuses); the hub verifies and counter-signs it."""
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    path = tmp / "manifest.json"
    doc = json.loads(path.read_text())
    doc["version"] = version
    doc.pop("signature", None)
    if edit is not None:
        edit(doc, tmp)
    if key is not None:  # a private key, or the path of its PEM
        from tandem.protocols.signing import load_private_key, sign_manifest

        doc = sign_manifest(doc, load_private_key(key) if isinstance(key, (str, Path)) else key)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True))
    tmp.rename(dst)
    return dst


def scramble_golden(doc: dict[str, Any], root: Path) -> None:
    """Roll the golden outputs by one row: the model is fine, its on-device self-test fails."""
    gpath = root / doc["golden"]["file"]["path"]
    # read without ast: a scenario may build this release while simulated devices self-test in other threads
    arrays: dict[str, Any] = {
        k: (np.roll(v, 1, axis=0) if k.startswith("output/") else v) for k, v in read_npz(gpath).items()
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    gpath.write_bytes(buf.getvalue())
    data = gpath.read_bytes()
    doc["golden"]["file"].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def collapsed_onnx(src: Path, out: Path) -> Path:
    """`src` with every float weight scaled by 1e-3: it runs and passes its own self-test, but answers
    near-uniform probabilities, so devices fall back on almost everything (a bad release)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array((arr * 1e-3).astype(arr.dtype), init.name))
    onnx.save(model, str(out))
    return out
