"""Compiled digits cloud and edge model directories for the hub inference tests.

They come from the real compiler (`model_compiler.pipeline.compile_model`, host
timing off to keep it to a few seconds); this is the one place to change how the
hub's test models are made.
"""

from __future__ import annotations

from pathlib import Path

CLOUD_NAME = "digits-cloud"
EDGE_NAME = "digits-edge"


def compile_digits(
    digits_dir: Path,
    which: str,
    out: Path,
    *,
    name: str,
    key: Path,
    profiles: tuple[str, ...] = ("cpu-x86",),
    version: str = "1.0.0",
    model: Path | None = None,
) -> Path:
    """Compile examples/digits' `which` model ("cloud" or "edge"; or `model`, an ONNX file made from it,
    with digits' calibration and validation data) into `out`."""
    from tandem.model_compiler.pipeline import CompileOptions, compile_model

    compile_model(
        CompileOptions(
            model=model or digits_dir / f"{which}.onnx",
            profiles=list(profiles),
            calib=digits_dir / "calib.npz",
            val=digits_dir / "val.npz",
            out=out,
            name=name,
            version=version,
            signing_key=key,
            timing=False,
        )
    )
    return out
