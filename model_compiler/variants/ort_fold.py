"""Fold a constant scale or shift that follows a convolution into the convolution's weights and bias.

PP-OCRv4 (PPLCNetV3's learnable affine blocks) exports `Mul(scale, Conv(x))` then `Add(., shift)` with
scalar constants after 28 of its convolutions. ONNX Runtime's own Conv+Mul fusion only looks for the
constant as the Mul's second input, so both ops stay: two extra passes over the tensor in FP32, and in
INT8 two more quantized tensors, the second rounding of the same values (measured on det: all chains
quantized, mask IoU 0.903 -> 0.943 on the calibration set once folded; FP32 ~1.1x faster).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def _affine_vector(value: np.ndarray, channels: int) -> np.ndarray | None:
    """A per-output-channel vector for a scalar or [C,1,1] / [1,C,1,1] constant, else None."""
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=np.float32)
    if value.shape in ((channels, 1, 1), (1, channels, 1, 1)):
        return value.reshape(channels).astype(np.float32)
    return None


def fold_conv_affine(model: onnx.ModelProto) -> int:
    """Fold, in place, each Mul/Add by a float constant (either input order) whose other input is
    a 2-D Conv's output read by nothing else into that Conv (W *= s, B = B * s, or B += t), until
    none is left. Returns how many ops were folded."""
    from onnx import numpy_helper

    from tandem.model_compiler.model_io import drop_unused_initializers, graphs_within

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers: dict[str, int] = {}
    for g in graphs_within(graph):  # a subgraph reading the conv's output keeps it
        for node in g.node:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
    producers = {out: node for node in graph.node for out in node.output}
    folded = 0
    kept = []
    renamed: set[str] = set()
    for node in list(graph.node):
        conv = None
        if node.op_type in ("Mul", "Add") and len(node.input) == 2:
            a, b = node.input
            const, act = (
                (a, b) if a in inits and b not in inits else (b, a) if b in inits and a not in inits else ("", "")
            )
            conv = producers.get(act) if const else None
            if conv is not None and (
                conv.op_type != "Conv"
                or readers.get(act) != 1
                or act in outputs
                or conv.input[1] not in inits
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
            ):
                conv = None
        if conv is None:
            kept.append(node)
            continue
        weight = numpy_helper.to_array(inits[conv.input[1]])
        constant = numpy_helper.to_array(inits[const])
        vector = _affine_vector(constant, weight.shape[0]) if constant.dtype == np.float32 else None
        if vector is None or weight.dtype != np.float32:
            kept.append(node)
            continue
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        bias = numpy_helper.to_array(inits[conv.input[2]]) if has_bias else np.zeros(weight.shape[0], np.float32)
        if node.op_type == "Mul":
            weight = weight * vector.reshape(-1, *([1] * (weight.ndim - 1)))
            bias = bias * vector
        else:
            bias = bias + vector
        names = (f"{conv.name or conv.output[0]}_W_fold{folded}", f"{conv.name or conv.output[0]}_B_fold{folded}")
        for name, value in zip(names, (weight, bias)):
            inits[name] = numpy_helper.from_array(value.astype(np.float32), name)
            graph.initializer.append(inits[name])
        conv.input[1] = names[0]
        if has_bias:
            conv.input[2] = names[1]
        else:
            conv.input.append(names[1])
        del producers[conv.output[0]]
        renamed.add(conv.output[0])
        conv.output[0] = node.output[0]  # the conv now writes what the Mul/Add wrote
        producers[node.output[0]] = conv
        folded += 1
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        drop_unused_initializers(graph, renamed)
    return folded


def fold_conv_affine_file(path: Path) -> int:
    """fold_conv_affine on a saved model, rewritten in place when anything folded."""
    import onnx

    model = onnx.load(str(path))
    folded = fold_conv_affine(model)
    if folded:
        onnx.save(model, str(path))
    return folded
