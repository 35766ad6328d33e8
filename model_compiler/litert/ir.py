"""The lowering's intermediate form: TFLite-shaped tensors and ops, before flatbuffers.

Shapes are physical (NHWC where the lowering chose it); `Op.kind` is a TFLite
BuiltinOperator name and `Op.options` plain values that writer.py maps to the schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point); per-channel along `axis` when len(scale) > 1."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int) -> "Quant":
        return cls(np.array([scale], dtype=np.float32), np.array([zero_point], dtype=np.int64))


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"  # float32 | int8 | int32
    data: np.ndarray | None = None  # constant contents, physical layout
    quant: Quant | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None


@dataclass
class Op:
    kind: str
    inputs: list[int]  # -1 marks an omitted optional input
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the ONNX node this op came from, for error messages


@dataclass
class Graph:
    tensors: list[Tensor] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def add_tensor(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray) -> int:
        data = np.ascontiguousarray(data)
        return self.add_tensor(Tensor(name, tuple(data.shape), data.dtype.name, data))

    def add_op(self, kind: str, inputs: list[int], outputs: list[int], source: str = "", **options: Any) -> Op:
        op = Op(kind, list(inputs), list(outputs), dict(options), source)
        self.ops.append(op)
        return op

    def consumers(self, index: int) -> list[Op]:
        return [op for op in self.ops if index in op.inputs]

    def producer(self, index: int) -> Op | None:
        for op in self.ops:
            if index in op.outputs:
                return op
        return None
