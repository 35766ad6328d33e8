"""Read numeric .npz files without `ast`: safe to call from many threads at once.

numpy's `np.load` parses each .npy header with `ast.literal_eval`, and CPython 3.11's AST module keeps a
recursion counter in shared state: two threads converting at once can raise "SystemError: AST constructor
recursion depth mismatch". The simulator self-tests ten devices in one process, and one such race once
failed a healthy release's canary. The headers numpy writes for plain numeric arrays are one fixed shape
(`{'descr': '<f4', 'fortran_order': False, 'shape': (16, 64), }`), so this reads that shape by regular
expression and refuses anything else (object or structured dtypes, pickles) with a message naming the member.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from tandem.protocols.errors import ContractError

__all__ = ["NpzFormatError", "read_npy", "read_npz"]

_MAGIC = b"\x93NUMPY"
_HEADER = re.compile(
    r"""^\{\s*
    (?:'descr':\s*'(?P<descr>[<>|=]?[a-zA-Z]\d*)',\s*
     |'fortran_order':\s*(?P<fortran>True|False),\s*
     |'shape':\s*\((?P<shape>(?:\s*\d+\s*,)*(?:\s*\d+)?\s*)\),?\s*
    ){3}
    \}\s*$""",
    re.VERBOSE,
)


class NpzFormatError(ContractError):
    """An .npz or .npy that is not a plain numeric array file, e.g. 'golden.npz: output/x/0: object dtype'."""


def read_npy(data: bytes, name: str = "array") -> np.ndarray:
    """One .npy member's bytes as a writable array; NpzFormatError for anything but a numeric array."""
    if data[:6] != _MAGIC or len(data) < 10:
        raise NpzFormatError(f"{name}: not a .npy array (no \\x93NUMPY magic)")
    major = data[6]
    if major == 1:
        (length,), start = struct.unpack_from("<H", data, 8), 10
    elif major in (2, 3):
        if len(data) < 12:
            raise NpzFormatError(f"{name}: truncated .npy header")
        (length,), start = struct.unpack_from("<I", data, 8), 12
    else:
        raise NpzFormatError(f"{name}: .npy format version {major} is not supported (1 to 3 are)")
    header = data[start : start + length].decode("utf-8" if major == 3 else "latin1", errors="replace")
    match = _HEADER.match(header.strip())
    if match is None or None in (match["descr"], match["fortran"], match["shape"]):
        raise NpzFormatError(f"{name}: header {header.strip()!r} is not a plain numeric array's")
    dtype = np.dtype(match["descr"])
    if dtype.kind not in "biufc":
        raise NpzFormatError(f"{name}: dtype {match['descr']!r} is not numeric or boolean")
    shape = tuple(int(part) for part in match["shape"].split(",") if part.strip())
    count = int(np.prod(shape, dtype=np.int64))
    body = bytearray(data[start + length :])  # a copy, so the array is writable and owns its memory
    if len(body) != count * dtype.itemsize:
        raise NpzFormatError(
            f"{name}: {len(body)} data bytes, shape {list(shape)} of {dtype} needs {count * dtype.itemsize}"
        )
    array = np.frombuffer(body, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if match["fortran"] == "True" else "C")


def read_npz(source: Path | str | bytes, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz (all, or `keys`), by member name without `.npy`; errors name the file and key."""
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (OSError, zipfile.BadZipFile) as exc:
        raise NpzFormatError(f"{label}: cannot open as .npz ({exc})") from exc
    with archive:
        members = {n[: -len(".npy")]: n for n in archive.namelist() if n.endswith(".npy")}
        wanted = list(members) if keys is None else keys
        missing = [k for k in wanted if k not in members]
        if missing:
            raise NpzFormatError(f"{label}: no array {missing[0]!r} (has: {', '.join(sorted(members)) or 'none'})")
        try:
            return {k: read_npy(archive.read(members[k]), f"{label}: {k}") for k in wanted}
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise NpzFormatError(f"{label}: cannot read ({exc})") from exc
