"""Runtime adapters: one `load_session` for ONNX Runtime, OpenVINO and LiteRT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tandem.hardware_profiles.runtimes.base import IOSpec, RuntimeSession, RuntimeUnavailableError
from tandem.hardware_profiles.runtimes.model_files import ModelFileError, check_model_file


def load_session(runtime: str, path: str | Path, **options: Any) -> RuntimeSession:
    """Open `path` with `runtime`; options go to that adapter (providers, device, threads).

    Raises RuntimeUnavailableError when the runtime is missing or rejects the file, and
    its ModelFileError when the file is not an allowed format or reaches outside its folder.
    """
    check_model_file(runtime, path)
    if runtime == "onnxruntime":
        from tandem.hardware_profiles.runtimes.onnxruntime import OnnxRuntimeSession

        return OnnxRuntimeSession(path, **options)
    if runtime == "openvino":
        from tandem.hardware_profiles.runtimes.openvino import OpenVINOSession

        return OpenVINOSession(path, **options)
    if runtime == "litert":
        from tandem.hardware_profiles.runtimes.litert import LiteRTSession

        return LiteRTSession(path, **options)
    raise RuntimeUnavailableError(f"unknown runtime {runtime!r} (known: onnxruntime, openvino, litert)")


__all__ = ["IOSpec", "ModelFileError", "RuntimeSession", "RuntimeUnavailableError", "check_model_file", "load_session"]
