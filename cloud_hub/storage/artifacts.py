"""Content-addressed artifact files: data_dir/artifacts/sha256/ab/abcdef..., written atomically.

A file's name is its sha256, so a path is a proof of content, identical files are
stored once, and any HTTP or object store serving the same paths can replace this.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from tandem.cloud_hub.errors import InvalidInputError, NotFoundError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


def sha256_file(path: str | Path) -> tuple[str, int]:
    """sha256 hex digest and size of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore:
    """Put, find and read immutable blobs by sha256."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where a blob lives; refuses anything that is not a sha256 (no traversal)."""
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
            raise InvalidInputError(f"{sha256!r} is not a sha256 digest (64 lowercase hex characters)")
        return self._blobs / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def size(self, sha256: str) -> int:
        path = self.path_for(sha256)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"artifact {sha256} is not stored on this hub") from None

    def put_file(self, source: str | Path, expected_sha256: str | None = None) -> tuple[str, int]:
        """Copy `source` in (hashing as it goes); refuse it if it does not match `expected_sha256`."""
        with open(source, "rb") as fh:
            return self.put_stream(fh, expected_sha256, what=str(source))

    def put_stream(self, stream: BinaryIO, expected_sha256: str | None = None, what: str = "upload") -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            if expected_sha256 is not None and sha != expected_sha256:
                raise InvalidInputError(f"{what}: sha256 is {sha}, but the manifest says {expected_sha256}")
            final = self.path_for(sha)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.is_file():
                os.unlink(tmp_name)
            else:
                os.chmod(tmp_name, 0o644)
                os.replace(tmp_name, final)  # atomic: readers see nothing or the whole blob
            return sha, size
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def open_range(self, sha256: str, start: int, length: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
        """Yield `length` bytes of a blob from offset `start`."""
        path = self.path_for(sha256)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"artifact {sha256} is not stored on this hub") from None

        def chunks() -> Iterator[bytes]:
            with fh:
                fh.seek(start)
                remaining = length
                while remaining > 0:
                    data = fh.read(min(chunk, remaining))
                    if not data:
                        break
                    remaining -= len(data)
                    yield data

        return chunks()
