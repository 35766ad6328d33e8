"""Static shape buckets, for runtimes that take static shapes only (LiteRT): a variant is built once
per bucket; a request runs on the bucket its shape equals, else is padded up to the smallest bucket
that fits where the task says padding is safe (CTC width), its outputs trimmed back along the padded
axis; any other shape is refused with the shapes that are served.

Pure numpy: the compiler validates through `BucketedSession` and the agent serves through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from tandem.tasks.errors import TaskError
from tandem.tasks.spec import TaskSpec

Shape = tuple[int, ...]
# kinds whose inputs may be padded along their dynamic axes by default, and the value padded with:
# a CTC recognizer reads a text line left to right, and PP-OCR itself pads normalized lines with 0
DEFAULT_PAD = {"ctc": 0.0}


class ShapeError(TaskError):
    """A shape no bucket takes, or a `--shapes` text that cannot be read; the message lists what is served."""


def parse_shapes(items: Sequence[str]) -> dict[str, list[Shape]]:
    """`--shapes NAME=1x3x48x160,1x3x48x320` (one item per input) -> {name: [shape, ...]}.

    Inputs given together must list as many shapes (bucket k takes the k-th shape of each)."""
    found: dict[str, list[Shape]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise ShapeError(f"--shapes {item!r}: expected NAME=DxDxD[,DxDxD...], e.g. x=1x3x48x160,1x3x48x320")
        if name in found:
            raise ShapeError(f"--shapes: input {name!r} given twice")
        shapes = []
        for part in text.split(","):
            try:
                dims = tuple(int(d) for d in part.strip().lower().split("x"))
            except ValueError:
                raise ShapeError(
                    f"--shapes {name}: {part.strip()!r} is not DxDxD (whole numbers joined by 'x')"
                ) from None
            if not dims or any(d < 1 for d in dims):
                raise ShapeError(f"--shapes {name}: {part.strip()!r} needs dimensions >= 1")
            if dims in shapes:
                raise ShapeError(f"--shapes {name}: {part.strip()} listed twice")
            shapes.append(dims)
        found[name] = shapes
    counts = {len(v) for v in found.values()}
    if len(counts) > 1:
        raise ShapeError(
            "--shapes: every input needs the same number of shapes (bucket k takes the k-th of each); got "
            + ", ".join(f"{n}: {len(v)}" for n, v in found.items())
        )
    return found


def pad_value(spec: TaskSpec | None) -> float | None:
    """The value inputs are padded with up to a bucket, or None where the task does not allow padding."""
    if spec is None:
        return None
    return spec.pad_value if spec.pad_value is not None else DEFAULT_PAD.get(spec.kind)


@dataclass(frozen=True)
class Bucket:
    """One static build: the shape of each bucketed input (axis 0 the batch, run row by row when 1)
    and the file that takes it (relative to the model folder, as in the manifest)."""

    inputs: Mapping[str, Shape]
    file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "inputs": {k: list(v) for k, v in self.inputs.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "buckets") -> "Bucket":
        try:
            inputs = {str(k): tuple(int(d) for d in v) for k, v in dict(data["inputs"]).items()}
            return cls(inputs, str(data.get("file", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ShapeError(f"{where}: expected {{'file': ..., 'inputs': {{name: [dims]}}}} ({exc})") from exc

    def label(self) -> str:
        return ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in self.inputs.items())


def _fits(want: Shape, have: Shape, padding: bool, pad_axes: Sequence[int]) -> bool | None:
    """True: exact; False: fits by padding; None: does not fit. Axis 0 of a batch-1 bucket takes any batch."""
    if len(want) != len(have):
        return None
    exact = True
    for k, (w, h) in enumerate(zip(want, have)):
        if w == h or (k == 0 and h == 1):
            continue
        if padding and k in pad_axes and w < h:
            exact = False
            continue
        return None
    return exact


def pick_bucket(
    buckets: Sequence[Bucket],
    shapes: Mapping[str, Shape],
    padding: float | None,
    pad_axes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[int, bool]:
    """(index of the bucket to run, whether the request must be padded to it).

    An exact match wins; else, when `padding` is not None, the smallest bucket every input fits
    into along its `pad_axes`; else ShapeError naming the shapes served."""
    pad_axes = pad_axes or {}
    padded: list[tuple[int, int]] = []
    for i, bucket in enumerate(buckets):
        fits = [
            _fits(tuple(shapes[n]), s, padding is not None, pad_axes.get(n, ())) if n in shapes else None
            for n, s in bucket.inputs.items()
        ]
        if all(f is True for f in fits):
            return i, False
        if all(f is not None for f in fits):
            padded.append((sum(math.prod(s[1:]) for s in bucket.inputs.values()), i))
    if padded:
        return min(padded)[1], True
    sent = ", ".join(f"{n} {'x'.join(map(str, shapes[n]))}" for n in buckets[0].inputs if n in shapes)
    how = (
        "equal to one of them, or smaller along a padded axis"
        if padding is not None
        else "exactly one of them (this task does not allow padding; set the task option pad_value to allow it)"
    )
    raise ShapeError(
        f"input shape {sent} is not served: this variant takes "
        + "; ".join(b.label() for b in buckets)
        + f" (axis 0 any batch), {how}"
    )


def pad_to(array: np.ndarray, shape: Shape, value: float) -> np.ndarray:
    """`array` padded at the end of each axis (axis 0 kept) up to `shape` with `value`."""
    target = (array.shape[0], *shape[1:])
    if array.shape == target:
        return array
    out = np.full(target, value, dtype=array.dtype)
    out[tuple(slice(0, d) for d in array.shape)] = array
    return out


def fit_to(array: np.ndarray, shape: Shape, value: float) -> np.ndarray:
    """`array` cropped or padded (with `value`) to `shape` beyond axis 0: calibration and validation data
    for a bucket other than their own size."""
    cropped = array[(slice(None), *(slice(0, d) for d in shape[1:]))]
    return pad_to(np.ascontiguousarray(cropped), shape, value)


def padded_axes(spec: TaskSpec | None, dynamic: Sequence[int], rank: int) -> tuple[int, ...]:
    """The dynamic axes a request may be padded along: a CTC line only along its width (the last axis;
    a taller or shorter line is another input, not a padded one), other tasks along every dynamic axis."""
    if spec is not None and spec.kind == "ctc":
        return tuple(a for a in dynamic if a == rank - 1)
    return tuple(dynamic)


def trim_axes(spec: TaskSpec | None, output_rank: int, input_rank: int) -> dict[int, int]:
    """Output axis -> the input axis it follows, for the task's output of a padded request: a CTC
    sequence's time axis follows the input's last (width) axis; a dense map's two spatial axes follow
    the input's. Other tasks are not trimmed (their outputs do not follow an input axis)."""
    if spec is None:
        return {}
    if spec.kind == "ctc" and output_rank == 3:
        return {1: input_rank - 1}
    if spec.kind == "dense" and output_rank >= 3:
        return {output_rank - 2: input_rank - 2, output_rank - 1: input_rank - 1}
    return {}


def trim(output: np.ndarray, axes: Mapping[int, int], sent: Shape, bucket: Shape) -> np.ndarray:
    """The output of a padded run cut back to what the unpadded input covers, in proportion."""
    index: list[slice] = [slice(None)] * output.ndim
    for out_axis, in_axis in axes.items():
        if sent[in_axis] < bucket[in_axis]:
            keep = math.ceil(sent[in_axis] * output.shape[out_axis] / bucket[in_axis])
            index[out_axis] = slice(0, min(keep, output.shape[out_axis]))
    return output[tuple(index)]


class BucketedSession:
    """One session per bucket behind the runtime-session interface (runtime, inputs, outputs, run,
    close). Inputs and outputs show -1 where buckets differ or padding is allowed."""

    def __init__(
        self,
        sessions: Sequence[Any],
        buckets: Sequence[Bucket],
        spec: TaskSpec | None = None,
        pad_axes: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        if not sessions or len(sessions) != len(buckets):
            raise ShapeError(f"{len(buckets)} bucket(s) for {len(sessions)} session(s)")
        self.sessions, self.buckets, self.spec = list(sessions), list(buckets), spec
        self.padding = pad_value(spec)
        self.pad_axes = {
            name: padded_axes(spec, axes, len(buckets[0].inputs.get(name, ())))
            for name, axes in (pad_axes or {}).items()
            if self.padding is not None
        }
        self.runtime = sessions[0].runtime
        self.inputs = self._merged([s.inputs for s in sessions], self.pad_axes)
        self.outputs = self._merged([s.outputs for s in sessions], {})
        self._task_output = spec.output if spec is not None else None

    @staticmethod
    def _merged(per_session: Sequence[Sequence[Any]], open_axes: Mapping[str, Sequence[int]]) -> list[Any]:
        merged = []
        for k, first in enumerate(per_session[0]):
            shape = [
                -1
                if any(len(s[k].shape) <= a or s[k].shape[a] != d for s in per_session)
                or a in open_axes.get(first.name, ())
                else d
                for a, d in enumerate(first.shape)
            ]
            merged.append(replace(first, shape=tuple(shape)))
        return merged

    def pick(self, shapes: Mapping[str, Shape]) -> tuple[int, bool]:
        """The bucket for these input shapes (ShapeError when none takes them)."""
        return pick_bucket(self.buckets, shapes, self.padding, self.pad_axes)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        names = list(self.buckets[0].inputs)
        if len(feeds) == 1 and len(names) == 1 and names[0] not in feeds:  # one unnamed input
            feeds = {names[0]: next(iter(feeds.values()))}
        shapes = {n: tuple(np.shape(feeds[n])) for n in names if n in feeds}
        index, padded = self.pick(shapes)
        bucket = self.buckets[index]
        if not padded:
            return self.sessions[index].run(feeds)
        assert self.padding is not None
        run_feeds = {
            n: pad_to(np.asarray(a), bucket.inputs[n], self.padding) if n in bucket.inputs else a
            for n, a in feeds.items()
        }
        outputs = self.sessions[index].run(run_feeds)
        sent, full = shapes[names[0]], bucket.inputs[names[0]]
        trimmed = []
        for spec, out in zip(self.outputs, outputs):
            out = np.asarray(out)
            if self._task_output in (None, spec.name):
                out = trim(out, trim_axes(self.spec, out.ndim, len(full)), sent, full)
            trimmed.append(out)
        return trimmed

    def close(self) -> None:
        for session in self.sessions:
            session.close()
