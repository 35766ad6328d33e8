"""Constant folding: evaluate with numpy the small shape and arithmetic ops whose inputs are all known.

Static shapes make Shape -> Slice -> Concat -> Reshape chains constant; folding them
keeps those int64 subgraphs out of the TFLite model.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


def _reshape_target(data_shape: Sequence[int], shape: np.ndarray, allowzero: int = 0) -> tuple[int, ...]:
    """ONNX Reshape semantics: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out = [int(d) for d in shape]
    for i, d in enumerate(out):
        if d == 0 and not allowzero:
            out[i] = int(data_shape[i])
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1])) if len(out) > 1 else 1
        total = int(np.prod(data_shape))
        out[out.index(-1)] = total // known if known else 0
    return tuple(out)


def reshape_target(data_shape: Sequence[int], shape: np.ndarray, allowzero: int = 0) -> tuple[int, ...]:
    return _reshape_target(data_shape, shape, allowzero)


Inputs = Sequence["np.ndarray | None"]


def _at(inputs: Inputs, index: int) -> np.ndarray:
    """Input `index`, which the op requires (the lowering checked it is a known constant)."""
    value = inputs[index]
    assert value is not None, f"input {index} is required"
    return value


def _axes(attrs: dict[str, Any], inputs: Inputs, index: int) -> list[int] | None:
    if "axes" in attrs:
        return list(attrs["axes"])
    value = inputs[index] if len(inputs) > index else None
    if value is not None:
        return [int(a) for a in value]
    return None


def _slice(inputs: Inputs, attrs: dict[str, Any]) -> np.ndarray:
    data = _at(inputs, 0)
    starts: Sequence[Any] | np.ndarray
    ends: Sequence[Any] | np.ndarray
    axes_in: Sequence[Any] | np.ndarray | None
    steps_in: Sequence[Any] | np.ndarray | None
    if "starts" in attrs:  # opset < 10
        starts, ends, axes_in, steps_in = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = _at(inputs, 1), _at(inputs, 2)
        axes_in = inputs[3] if len(inputs) > 3 and inputs[3] is not None else None
        steps_in = inputs[4] if len(inputs) > 4 and inputs[4] is not None else None
    axes = list(range(len(starts))) if axes_in is None else [int(a) for a in axes_in]
    steps = [1] * len(starts) if steps_in is None else [int(s) for s in steps_in]
    index = [slice(None)] * data.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[a] = slice(int(s), int(e), st)
    return data[tuple(index)]


def _unsqueeze(inputs: Inputs, attrs: dict[str, Any]) -> np.ndarray:
    data = _at(inputs, 0)
    given = _axes(attrs, inputs, 1)
    assert given is not None, "Unsqueeze needs axes"
    axes = sorted(a % (data.ndim + len(given)) for a in given)
    for a in axes:
        data = np.expand_dims(data, a)
    return data


def _squeeze(inputs: Inputs, attrs: dict[str, Any]) -> np.ndarray:
    axes = _axes(attrs, inputs, 1)
    return np.squeeze(_at(inputs, 0), axis=None if axes is None else tuple(axes))


def _cast(inputs: Inputs, attrs: dict[str, Any]) -> np.ndarray:
    from onnx.helper import tensor_dtype_to_np_dtype

    return _at(inputs, 0).astype(tensor_dtype_to_np_dtype(attrs["to"]))


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return (a // b).astype(a.dtype)
    return (a / b).astype(a.dtype)


def _flatten(inputs: Inputs, attrs: dict[str, Any]) -> np.ndarray:
    x = _at(inputs, 0)
    axis = attrs.get("axis", 1) % max(x.ndim, 1) if x.ndim else 0
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _constant_of_shape(inputs: Inputs, attrs: dict[str, Any]) -> np.ndarray:
    value = np.asarray(attrs.get("value", np.zeros(1, np.float32))).reshape(-1)
    return np.full([int(d) for d in _at(inputs, 0)], value[0], dtype=value.dtype)


def _range(inputs: Inputs, attrs: dict[str, Any]) -> np.ndarray:
    # each a single value (reshape(()) checks it), taken as a numpy scalar of its own dtype
    start, limit, delta = (np.asarray(v).reshape(()).reshape(1)[0] for v in inputs[:3])
    return np.arange(start, limit, delta, dtype=np.asarray(inputs[0]).dtype)


Folder = Callable[[list, dict], np.ndarray]

FOLDERS: dict[str, Folder] = {
    "Identity": lambda i, a: i[0],
    "Cast": _cast,
    "Reshape": lambda i, a: i[0].reshape(_reshape_target(i[0].shape, i[1], a.get("allowzero", 0))),
    "Flatten": _flatten,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": lambda i, a: np.concatenate([np.atleast_1d(x) for x in i], axis=a["axis"]),
    "Slice": _slice,
    "Gather": lambda i, a: np.take(i[0], i[1], axis=a.get("axis", 0)),
    "Transpose": lambda i, a: np.transpose(i[0], a.get("perm")),
    "Add": lambda i, a: (i[0] + i[1]).astype(i[0].dtype),
    "Sub": lambda i, a: (i[0] - i[1]).astype(i[0].dtype),
    "Mul": lambda i, a: (i[0] * i[1]).astype(i[0].dtype),
    "Div": lambda i, a: _div(i[0], i[1]),
    "Neg": lambda i, a: -i[0],
    "Sqrt": lambda i, a: np.sqrt(i[0]),
    "Reciprocal": lambda i, a: (1.0 / i[0]).astype(i[0].dtype),
    # ONNX Pow keeps the base's type (an int exponent on a float base, or the reverse).
    "Pow": lambda i, a: np.power(i[0], i[1].astype(i[0].dtype)).astype(i[0].dtype),
    # Anchor grids of detection heads (YOLOv8): constant once the input shape is static.
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Expand": lambda i, a: i[0] * np.ones([int(d) for d in i[1]], dtype=i[0].dtype),
}


def fold(op_type: str, inputs: Inputs, attrs: dict[str, Any]) -> np.ndarray | None:
    """The folded value, or None when `op_type` is not foldable here."""
    folder = FOLDERS.get(op_type)
    if folder is None:
        return None
    return np.asarray(folder(list(inputs), attrs))
