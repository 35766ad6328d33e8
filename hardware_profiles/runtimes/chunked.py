"""Run many samples through a session in the chunks it accepts, and join the outputs.

A variant may fix its batch (an NPU's static [1, 8]) or have no batch axis at all ([3, 8]: one
input is three rows), so a stack of samples cannot always be fed in one run. The compiler runs its
validation data this way (model_compiler/validate.run_dataset) and the device its golden self-test
(edge_agent/ota/selftest.py): one rule for both, so a variant the compiler validated also passes
the device's self-test.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

Axes = Mapping[str, "int | None"]


def batch_axis(shape: Sequence[int]) -> int | None:
    """The axis samples lie along: the first dynamic one, 0 when all are fixed, None for a scalar."""
    if not len(shape):
        return None
    return next((i for i, d in enumerate(shape) if d is None or d < 0), 0)


def take(arr: np.ndarray, axis: int | None, start: int, stop: int | None) -> np.ndarray:
    """Samples [start:stop] along `axis`; an unbatched (scalar) input is the same for every slice."""
    if axis is None:
        return arr
    index = [slice(None)] * arr.ndim
    index[axis] = slice(start, stop)
    return arr[tuple(index)]


def sample_count(data: Mapping[str, np.ndarray], axes: Axes | None = None) -> int:
    """Samples along the batch axis of the first batched input (1 when every input is a scalar)."""
    axes = axes or {}
    for name, arr in data.items():
        axis = axes.get(name, 0)
        if axis is not None and np.ndim(arr):
            return int(np.shape(arr)[axis])
    return 1


def fixed_batch(session: Any, axes: Axes | None = None) -> int | None:
    """The batch size the session insists on along an input's batch axis, if any."""
    axes = axes or {}
    for spec in session.inputs:
        axis = axes.get(spec.name, 0)
        if axis is not None and len(spec.shape) > axis and spec.shape[axis] > 0:
            return int(spec.shape[axis])
    return None


def run_chunked(
    session: Any, data: Mapping[str, np.ndarray], axes: Axes | None = None, chunk: int | None = None
) -> list[np.ndarray]:
    """Run all samples, in chunks the session accepts (its fixed batch, else `chunk`, else all at once),
    sliced along each input's batch axis (scalars fed whole); outputs joined along their own batch axis."""
    axes = axes or {}
    n = sample_count(data, axes)
    size = fixed_batch(session, axes) or chunk or max(n, 1)
    parts: list[list[np.ndarray]] = []
    counts: list[int] = []
    for start in range(0, n, size):
        feeds = {
            name: np.asarray(take(arr, axes.get(name, 0), start, start + size), order="C") for name, arr in data.items()
        }
        parts.append([np.asarray(o) for o in session.run(feeds)])
        counts.append(min(size, n - start))
    if len(parts) == 1:
        return parts[0]
    out_axes = [batch_axis(spec.shape) for spec in session.outputs]
    joined = []
    for i in range(len(parts[0])):
        if not parts[0][i].ndim:
            joined.append(parts[0][i])
            continue
        axis = joining_axis(out_axes[i] if i < len(out_axes) else 0, [p[i].shape for p in parts], counts)
        joined.append(np.concatenate([p[i] for p in parts], axis=axis))
    return joined


def joining_axis(declared: int | None, shapes: list[tuple[int, ...]], counts: list[int]) -> int:
    """The axis an output's chunks lie along: the declared batch axis when every chunk's size there
    is its sample count, else the first axis where that holds. A state output declared all-dynamic
    (Silero VAD's stateN: [?, ?, ?], really [2, N, 128]) would otherwise be joined on axis 0."""
    rank = len(shapes[0])
    candidates = ([declared] if declared is not None else []) + list(range(rank))
    for axis in candidates:
        if all(len(s) == rank and s[axis] == c for s, c in zip(shapes, counts)):
            return axis
    return declared or 0
