"""LiteRT (TFLite) adapter: ai_edge_litert's Interpreter, or tflite_runtime's where that is installed.

TFLite models have static shapes; Tandem's are lowered at batch 1. A batched request runs
on a copy of the interpreter resized to that batch when the model allows it (checked once
per size against the batch-1 answer), otherwise sample by sample. Int8 inputs/outputs are
quantized/dequantized here with the tensor's own scale and zero point (float_io=True), so
callers feed the same float arrays they would feed ONNX Runtime.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tandem.hardware_profiles.runtimes.base import IOSpec, RuntimeUnavailableError

logger = logging.getLogger(__name__)


def interpreter_class() -> Any:
    """The Interpreter class of whichever LiteRT package is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeUnavailableError(
                "LiteRT is not installed: pip install ai-edge-litert (or tflite-runtime)"
            ) from exc
    return Interpreter


def _quant(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero_point)) if scale else None


class LiteRTSession:
    runtime = "litert"

    def __init__(self, path: str | Path, threads: int | None = None, float_io: bool = True, **_: Any) -> None:
        Interpreter = interpreter_class()
        self._open = lambda: Interpreter(model_path=str(path), num_threads=threads)
        try:
            self._interpreter = self._open()
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeUnavailableError(f"LiteRT cannot load {path}: {exc}") from exc
        # Batch size -> an interpreter resized to it, or None when resizing proved impossible
        # or wrong for this model (a RESHAPE with the batch baked in, for instance).
        self._batched: dict[int, Any] = {}
        self._in = self._interpreter.get_input_details()
        self._out = self._interpreter.get_output_details()
        self._float_io = float_io
        self._lock = threading.Lock()
        self.batch = int(self._in[0]["shape"][0]) if len(self._in[0]["shape"]) else 1
        self.quantization = {d["name"]: _quant(d) for d in [*self._in, *self._out] if _quant(d)}
        self.inputs = [self._spec(d) for d in self._in]
        self.outputs = [self._spec(d) for d in self._out]

    def _spec(self, detail: Mapping[str, Any]) -> IOSpec:
        dtype = np.dtype(detail["dtype"]).name
        if self._float_io and _quant(detail) and dtype in ("int8", "uint8", "int16"):
            dtype = "float32"
        shape = tuple(int(d) for d in detail["shape"])
        if shape and shape[0] == 1:
            shape = (-1, *shape[1:])  # run() takes any batch for a batch-1 model
        return IOSpec(detail["name"], dtype, shape)

    def _to_model(self, detail: Mapping[str, Any], value: np.ndarray) -> np.ndarray:
        dtype = np.dtype(detail["dtype"])
        q = _quant(detail)
        if q and dtype.kind in "iu" and np.asarray(value).dtype.kind == "f":
            info = np.iinfo(dtype)
            value = np.clip(np.round(np.asarray(value, np.float32) / q[0]) + q[1], info.min, info.max)
        return np.ascontiguousarray(value, dtype=dtype)

    def _from_model(self, detail: Mapping[str, Any], value: np.ndarray) -> np.ndarray:
        q = _quant(detail)
        if self._float_io and q and value.dtype.kind in "iu":
            return ((value.astype(np.float32) - q[1]) * q[0]).astype(np.float32)
        return value

    def _feed_list(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if len(self._in) == 1 and len(feeds) == 1 and self._in[0]["name"] not in feeds:
            return [np.asarray(next(iter(feeds.values())))]
        try:
            return [np.asarray(feeds[d["name"]]) for d in self._in]
        except KeyError as exc:
            raise ValueError(f"missing input {exc.args[0]!r} (model inputs: {[d['name'] for d in self._in]})") from None

    def _invoke(self, arrays: list[np.ndarray], it: Any = None) -> list[np.ndarray]:
        it = it or self._interpreter
        for detail, value in zip(self._in, arrays):
            it.set_tensor(detail["index"], self._to_model(detail, value))
        it.invoke()
        return [self._from_model(d, it.get_tensor(d["index"])) for d in self._out]

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = self._feed_list(feeds)
        n = len(arrays[0]) if arrays[0].ndim else 1
        with self._lock:
            if n == self.batch:
                return self._invoke(arrays)
            if self.batch != 1:
                raise ValueError(f"this LiteRT model takes batches of exactly {self.batch}, got {n}")
            batched = self._resized(n, arrays)
            if batched is not None:
                return self._invoke(arrays, batched)
            parts = [self._invoke([a[i : i + 1] for a in arrays]) for i in range(n)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self._out))]

    def _resized(self, n: int, arrays: list[np.ndarray]) -> Any:
        """An interpreter for batch n, tried once per size and kept only if its first row
        equals the batch-1 answer; otherwise None and the caller runs sample by sample."""
        if n in self._batched:
            return self._batched[n]
        if len(self._batched) >= 4:  # a few sizes (the micro-batcher's); others run sample by sample
            return None
        it = None
        try:
            it = self._open()
            for d in self._in:
                it.resize_tensor_input(d["index"], [n, *d["shape"][1:]])
            it.allocate_tensors()
            out = self._invoke(arrays, it)
            first = self._invoke([a[:1] for a in arrays])
            if any(o.shape[0] != n or not np.allclose(o[:1], f, rtol=1e-5, atol=1e-6) for o, f in zip(out, first)):
                it = None
        except (ValueError, RuntimeError) as exc:
            logger.debug("litert: batch %d by resizing is not possible here (%s); running sample by sample", n, exc)
            it = None
        self._batched[n] = it
        return it

    def close(self) -> None:
        self._interpreter = None
        self._batched.clear()
