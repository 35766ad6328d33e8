"""Where a .tflite file's bytes go, by category: constant data per type, quantization scales and
zero points, names, tensor/operator/buffer tables, vtables, and the padding left over.

Issue 20 asked what keeps LiteRT INT8 files above 0.3x of FP32 when the int8 weights alone are
0.25x; this walks the flatbuffer with the schema ai-edge-litert ships and counts every vector,
string and table once (shared offsets are counted where they are first met), so the categories
add up to the file size.
"""

from __future__ import annotations

import struct
from typing import Any

from tandem.model_compiler.litert.writer import _TYPES, _schema

_TYPE_NAMES = {code: name for name, code in _TYPES.items()}


class _Spans:
    """Byte ranges of the file by category; a range that starts where one was counted is shared."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.seen: set[int] = set()
        self.sizes: dict[str, int] = {}

    def add(self, category: str, start: int, size: int) -> None:
        if start in self.seen:
            return
        self.seen.add(start)
        self.sizes[category] = self.sizes.get(category, 0) + size

    def table(self, category: str, tab: Any) -> None:
        """A table's inline fields, and its vtable (vtables are shared across tables of one shape)."""
        pos = tab.Pos
        vtable = pos - struct.unpack_from("<i", self.data, pos)[0]
        vt_size, obj_size = struct.unpack_from("<HH", self.data, vtable)
        self.add(category, pos, obj_size)
        self.add("vtables", vtable, vt_size)

    def vector(self, category: str, tab: Any, field: int, item: int, prefix_category: str | None = None) -> None:
        """A vector field (its elements `item` bytes each); the 4-byte length goes to `prefix_category`."""
        o = tab.Offset(4 + 2 * field)
        if not o:
            return
        start = tab.Vector(o)
        if start - 4 in self.seen:
            return
        self.add(prefix_category or category, start - 4, 4)
        self.sizes[category] = self.sizes.get(category, 0) + tab.VectorLen(o) * item

    def string(self, category: str, tab: Any, field: int) -> None:
        o = tab.Offset(4 + 2 * field)
        if o:
            start = tab.Indirect(o + tab.Pos)
            self.add(category, start, 4 + struct.unpack_from("<I", self.data, start)[0] + 1)


def breakdown(data: bytes) -> dict[str, int]:
    """Bytes of a .tflite file per category; the values add up to len(data)."""
    s = _schema()
    model = s.Model.GetRootAsModel(data, 0)
    spans = _Spans(data)
    spans.table("model", model._tab)
    spans.string("names", model._tab, 3)  # description
    spans.vector("operators", model._tab, 1, 4)
    for k in range(model.OperatorCodesLength()):
        spans.table("operators", model.OperatorCodes(k)._tab)
    spans.vector("buffers", model._tab, 4, 4)
    types: dict[int, str] = {}
    for g in range(model.SubgraphsLength()):
        sub = model.Subgraphs(g)
        spans.table("tensors", sub._tab)
        spans.string("names", sub._tab, 4)
        for field in (0, 1, 2, 3):  # tensors, inputs, outputs, operators: offsets / indices
            spans.vector("tensors" if field < 3 else "operators", sub._tab, field, 4)
        for k in range(sub.TensorsLength()):
            t = sub.Tensors(k)
            types.setdefault(t.Buffer(), _TYPE_NAMES.get(t.Type(), str(t.Type())))
            spans.table("tensors", t._tab)
            spans.vector("tensors", t._tab, 0, 4)  # shape
            spans.string("names", t._tab, 3)
            q = t.Quantization()
            if q is not None:
                spans.table("quantization: tables", q._tab)
                spans.vector("quantization: scales", q._tab, 2, 4, "quantization: tables")
                spans.vector("quantization: zero points", q._tab, 3, 8, "quantization: tables")
                spans.vector("quantization: min/max", q._tab, 0, 4, "quantization: tables")
                spans.vector("quantization: min/max", q._tab, 1, 4, "quantization: tables")
        for k in range(sub.OperatorsLength()):
            op = sub.Operators(k)
            spans.table("operators", op._tab)
            spans.vector("operators", op._tab, 1, 4)
            spans.vector("operators", op._tab, 2, 4)
            o = op._tab.Offset(12)  # builtin_options: a table of the op's own type
            if o:
                options = type(op._tab)(data, op._tab.Indirect(o + op._tab.Pos))
                spans.table("operators", options)
    for k in range(model.BuffersLength()):
        buf = model.Buffers(k)
        spans.table("buffers", buf._tab)
        spans.vector(f"constant data: {types.get(k, 'unused')}", buf._tab, 0, 1, "buffers")
    for k in range(model.MetadataLength()):
        spans.table("metadata", model.Metadata(k)._tab)
        spans.string("metadata", model.Metadata(k)._tab, 0)
    spans.vector("metadata", model._tab, 6, 4)
    spans.vector("metadata", model._tab, 5, 4)
    for k in range(model.SignatureDefsLength()):
        spans.table("metadata", model.SignatureDefs(k)._tab)
    sizes = dict(sorted(spans.sizes.items()))
    sizes["header and padding"] = len(data) - sum(sizes.values())
    return sizes
