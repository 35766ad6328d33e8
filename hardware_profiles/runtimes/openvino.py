"""OpenVINO adapter (IR .xml/.bin, or ONNX read directly).

An IR built with static shapes (a profile's `static_shapes`, `tandem-compile --shapes`) takes batch 1
only; a larger batch runs sample by sample here, so callers see the same batching as for any variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tandem.hardware_profiles.runtimes.base import IOSpec, RuntimeUnavailableError

_core = None


def _get_core() -> Any:
    global _core
    if _core is None:
        import openvino as ov

        _core = ov.Core()
    return _core


def available_devices() -> list[str]:
    try:
        return list(_get_core().available_devices)
    except ImportError:
        return []


class OpenVINOSession:
    runtime = "openvino"

    def __init__(
        self,
        path: str | Path,
        device: str = "CPU",
        threads: int | None = None,
        performance_hint: str = "LATENCY",
        inference_precision: str | None = None,
    ) -> None:
        """`inference_precision` ("f32", "bf16", "f16") pins OpenVINO's INFERENCE_PRECISION_HINT:
        CPUs with AVX512-BF16/AMX otherwise run FP32 models in bf16 by default."""
        try:
            core = _get_core()
        except ImportError as exc:
            raise RuntimeUnavailableError("openvino is not installed (pip install openvino)") from exc
        if device not in core.available_devices:
            raise RuntimeUnavailableError(
                f"OpenVINO device {device!r} is not present here (have: {', '.join(core.available_devices)})"
            )
        config: dict[str, object] = {"PERFORMANCE_HINT": performance_hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if inference_precision:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        try:
            model = core.read_model(str(path))
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise RuntimeUnavailableError(f"OpenVINO cannot load {path} on {device}: {exc}") from exc
        self._request = self._compiled.create_infer_request()
        self.device = device
        self.inputs = [self._spec(p, f"input{i}") for i, p in enumerate(self._compiled.inputs)]
        self.outputs = [self._spec(p, f"output{i}") for i, p in enumerate(self._compiled.outputs)]
        # every input a static batch of 1 (axis 0): batches larger than 1 are split into samples
        self._one_at_a_time = bool(self.inputs) and all(s.shape and s.shape[0] == 1 for s in self.inputs)

    @staticmethod
    def _spec(port: Any, fallback: str) -> IOSpec:
        names = port.get_names()
        name = port.get_any_name() if names else fallback
        shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
        return IOSpec(name, np.dtype(port.get_element_type().to_dtype()).name, shape)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._one_at_a_time:
            n = {len(v) if np.ndim(v) else 1 for v in feeds.values()}
            if len(n) == 1 and (count := n.pop()) > 1:
                parts = [self._infer({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(count)]
                return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
        return self._infer(feeds)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer({name: np.ascontiguousarray(v) for name, v in feeds.items()})
        return [np.array(result[port]) for port in self._compiled.outputs]

    def close(self) -> None:
        self._request = None
        self._compiled = None
