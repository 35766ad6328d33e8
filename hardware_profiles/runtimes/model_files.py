"""What a runtime may open: ONNX, OpenVINO IR or TFLite files, whose every byte lies inside the model's folder.

A model directory arrives over the network (OTA, hub uploads), so before a runtime
opens a file: its suffix must be one of the formats we load (nothing that unpickles),
it must not be a symlink, and an ONNX file's external-data references must be plain
relative names inside the file's folder (no absolute paths, no '..', no symlinks), so a
crafted model cannot make ONNX Runtime read /etc/shadow or a device key as weights.

The ONNX scan reads the protobuf wire format directly (the `onnx` package is not on
devices) over an mmap and skips tensor payloads by length, so a large model is not read twice.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator

from tandem.hardware_profiles.runtimes.base import RuntimeUnavailableError

ALLOWED_SUFFIXES = {
    "onnxruntime": (".onnx",),
    "openvino": (".xml", ".onnx"),  # IR (.xml + .bin beside it), or ONNX read directly
    "litert": (".tflite",),
}
MAX_EXTERNAL_FILES = 10_000


class ModelFileError(RuntimeUnavailableError):
    """A model file is of a format we do not load, or reaches outside its folder."""


def check_model_file(runtime: str, path: str | Path) -> Path:
    """Return `path` if `runtime` may open it, else raise ModelFileError saying why."""
    path = Path(path)
    allowed = ALLOWED_SUFFIXES.get(runtime)
    if allowed is None:
        raise ModelFileError(f"unknown runtime {runtime!r} (known: {', '.join(ALLOWED_SUFFIXES)})")
    if path.suffix.lower() not in allowed:
        raise ModelFileError(f"{path.name}: {runtime} loads only {', '.join(allowed)} files here")
    folder = path.parent.resolve()
    _check_inside(path, folder, "model file")
    if path.suffix.lower() == ".onnx":
        for location in onnx_external_locations(path):
            _check_location(location, folder, path.name)
    elif path.suffix.lower() == ".xml":
        weights = path.with_suffix(".bin")
        if weights.exists() or weights.is_symlink():
            _check_inside(weights, folder, "IR weights")
    return path


def _check_inside(path: Path, folder: Path, what: str) -> None:
    if path.is_symlink():
        raise ModelFileError(f"{path.name}: the {what} is a symlink; model folders must hold real files")
    if not path.is_file():
        raise ModelFileError(f"{path}: the {what} does not exist")
    resolved = path.resolve()
    if resolved.parent != folder and folder not in resolved.parents:
        raise ModelFileError(f"{path.name}: the {what} resolves outside its model folder")


def _check_location(location: str, folder: Path, model_name: str) -> None:
    where = f"{model_name}: external data {location!r}"
    if not location or "\x00" in location:
        raise ModelFileError(f"{where}: empty or holds a NUL")
    for pure in (PurePosixPath(location), PureWindowsPath(location)):
        if pure.is_absolute() or pure.drive or pure.anchor:
            raise ModelFileError(f"{where}: absolute paths are not allowed; keep weights beside the model")
        if ".." in pure.parts:
            raise ModelFileError(f"{where}: '..' is not allowed; keep weights inside the model folder")
    target = folder / location
    current = folder
    for part in PurePosixPath(location.replace("\\", "/")).parts:  # no symlinked folder on the way either
        current = current / part
        if current.is_symlink():
            raise ModelFileError(f"{where}: {part!r} is a symlink; model folders must hold real files")
    if not target.is_file():
        raise ModelFileError(f"{where}: not found in the model folder")
    if folder not in target.resolve().parents:
        raise ModelFileError(f"{where}: resolves outside the model folder")


# -- a minimal ONNX protobuf reader: only the fields that can hold external-data references --------

# ModelProto.graph=7; GraphProto: node=1, initializer=5, sparse_initializer=15;
# NodeProto.attribute=5; AttributeProto: t=5, g=6, tensors=10, graphs=11, sparse_tensor=22,
# sparse_tensors=23; SparseTensorProto: values=1, indices=2; TensorProto: external_data=13,
# data_location=14; StringStringEntryProto: key=1, value=2. ModelProto.functions=25 ->
# FunctionProto.node=7.
_GRAPH = {1: "node", 5: "tensor", 15: "sparse"}
_NODE = {5: "attribute"}
_ATTRIBUTE = {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"}
_SPARSE = {1: "tensor", 2: "tensor"}
_FUNCTION = {7: "node"}


class _Truncated(ValueError):
    pass


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise _Truncated("bad varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """(field number, wire type, value) of one message; length-delimited values as views (no copy)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, wire, value
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise _Truncated("field runs past the end")
            yield field, wire, buf[i : i + n]
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise _Truncated(f"wire type {wire}")


def _tensor_locations(buf: memoryview) -> Iterator[str]:
    external = False
    entries = []
    for field, wire, value in _fields(buf):
        if field == 14 and wire == 0:
            external = value == 1  # DataLocation.EXTERNAL
        elif field == 13 and wire == 2:
            entry = {f: bytes(v).decode("utf-8", "replace") for f, w, v in _fields(value) if w == 2}  # type: ignore[arg-type]
            entries.append(entry)
    for entry in entries:
        if entry.get(1) == "location":
            yield entry.get(2, "")
    if external and not any(e.get(1) == "location" for e in entries):
        yield ""  # EXTERNAL without a location: refused by _check_location


def _walk(buf: memoryview, kind: str, depth: int = 0) -> Iterator[str]:
    if depth > 64:
        raise _Truncated("subgraphs nested too deep")
    if kind == "tensor":
        yield from _tensor_locations(buf)
        return
    table = {"graph": _GRAPH, "node": _NODE, "attribute": _ATTRIBUTE, "sparse": _SPARSE, "function": _FUNCTION}[kind]
    for field, wire, value in _fields(buf):
        child = table.get(field)
        if child is not None and wire == 2:
            yield from _walk(value, child, depth + 1)  # type: ignore[arg-type]


def onnx_external_locations(path: str | Path) -> list[str]:
    """Every external-data `location` an ONNX file references (duplicates removed, in order)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return []
        # mmap: a multi-GB model is scanned without being read into memory first. Not closed
        # explicitly: an error's traceback still holds slices of it; refcounting unmaps it.
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return _scan(memoryview(mapped), Path(path).name)


def _scan(data: memoryview, name: str) -> list[str]:
    seen: dict[str, None] = {}
    try:
        for field, wire, value in _fields(data):
            if wire != 2:
                continue
            if field == 7:
                locations = _walk(value, "graph")  # type: ignore[arg-type]
            elif field == 25:
                locations = _walk(value, "function")  # type: ignore[arg-type]
            else:
                continue
            for location in locations:
                seen[location] = None
                if len(seen) > MAX_EXTERNAL_FILES:
                    raise ModelFileError(f"{name}: over {MAX_EXTERNAL_FILES} external data files")
    except _Truncated as exc:
        raise ModelFileError(f"{name}: not a valid ONNX file ({exc})") from exc
    return list(seen)


__all__ = ["ALLOWED_SUFFIXES", "ModelFileError", "check_model_file", "onnx_external_locations"]
