"""HTTP downloads into the staging area, resumable with Range, bounded in size, retries and time.

A file grows in `<path>.part`; after an interruption (a dropped connection, or the agent
killed and restarted) the next attempt asks for `Range: bytes=<have>-` with `If-Range`
on the expected sha256 (the hub's ETag), so nothing already received is fetched again.
The `.part` is renamed to its final name only at the expected size; hashes are checked
by `verify`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from edge_agent.ota.errors import DownloadError
from protocols import limits

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = limits.MAX_MANIFEST_BYTES


@dataclass(frozen=True)
class DownloadConfig:
    token: str | None = None                 # bearer token for the hub (scope read)
    timeout_s: float = 30.0                  # per request (connect and between bytes)
    attempts: int = 5                        # per file, counting the first
    backoff_s: float = 0.2                   # doubled after each failed attempt
    chunk_bytes: int = 256 * 1024
    max_file_bytes: int = limits.MAX_ARTIFACT_BYTES
    rate_limit_bps: float | None = None      # cap for metered links; None: as fast as the link goes


class Downloader:
    """One HTTP client per OTA worker; `cancel` stops a transfer between chunks."""

    def __init__(self, config: DownloadConfig, cancel: threading.Event | None = None,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.cancel = cancel or threading.Event()
        self.on_progress = on_progress
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self._http = httpx.Client(headers=headers, timeout=config.timeout_s, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def fetch_json(self, url: str, max_bytes: int = MAX_MANIFEST_BYTES) -> dict[str, Any]:
        body = self._with_retries(url, lambda: self._get_small(url, max_bytes))
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise DownloadError(f"{url}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DownloadError(f"{url}: expected a JSON object")
        return data

    def fetch_file(self, url: str, dest: Path, size: int, sha256: str) -> None:
        """Bring `dest` to exactly `size` bytes from `url`, resuming a previous `.part`."""
        if size > self.config.max_file_bytes:
            raise DownloadError(f"{dest.name}: {size} bytes is over max_file_bytes={self.config.max_file_bytes}")
        if dest.is_file() and dest.stat().st_size == size:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        self._with_retries(url, lambda: self._get_into(url, part, size, sha256))
        os.replace(part, dest)

    # -- internals ---------------------------------------------------------------------

    def _with_retries(self, url: str, attempt: Callable[[], Any]) -> Any:
        delay = self.config.backoff_s
        for n in range(1, self.config.attempts + 1):
            if self.cancel.is_set():
                raise DownloadError(f"{url}: cancelled")
            try:
                return attempt()
            except (httpx.TransportError, _Retry) as exc:
                if n == self.config.attempts:
                    raise DownloadError(f"{url}: failed after {n} attempts ({exc})") from exc
                log.info("download retry url=%s attempt=%d error=%s", url, n, exc)
                self.cancel.wait(delay)
                delay *= 2
        raise DownloadError(f"{url}: no attempts")  # attempts < 1

    def _get_small(self, url: str, max_bytes: int) -> bytes:
        with self._http.stream("GET", url) as resp:
            _check_status(url, resp, (200,))
            out = bytearray()
            for chunk in resp.iter_bytes():
                out += chunk
                if len(out) > max_bytes:
                    raise DownloadError(f"{url}: more than {max_bytes} bytes")
            return bytes(out)

    def _get_into(self, url: str, part: Path, size: int, sha256: str) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have == size:
            return
        headers = {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'} if have else {}
        started = time.monotonic()
        with self._http.stream("GET", url, headers=headers) as resp:
            _check_status(url, resp, (200, 206))
            if resp.status_code == 200:
                have = 0  # the server sent the whole file (no Range support, or a changed ETag)
            elif not resp.headers.get("content-range", "").startswith(f"bytes {have}-"):
                raise DownloadError(f"{url}: asked for bytes {have}-, got Content-Range {resp.headers.get('content-range')!r}")
            with open(part, "r+b" if have else "wb") as fh:
                fh.seek(have)
                fh.truncate()
                received = 0
                for chunk in resp.iter_bytes(self.config.chunk_bytes):
                    if self.cancel.is_set():
                        raise DownloadError(f"{url}: cancelled")
                    if have + len(chunk) > size:
                        raise DownloadError(f"{part.name[:-5]}: the server sent more than the manifest's {size} bytes")
                    fh.write(chunk)
                    have += len(chunk)
                    received += len(chunk)
                    if self.on_progress:
                        self.on_progress(len(chunk))
                    self._throttle(received, started)
                fh.flush()
                os.fsync(fh.fileno())
        if have != size:
            raise _Retry(f"connection ended at {have} of {size} bytes")

    def _throttle(self, received: int, started: float) -> None:
        rate = self.config.rate_limit_bps
        if rate:
            ahead = received / rate - (time.monotonic() - started)
            if ahead > 0:
                self.cancel.wait(ahead)


class _Retry(Exception):
    """A transient failure worth another attempt (short read, 5xx, 429)."""


def _check_status(url: str, resp: httpx.Response, ok: tuple[int, ...]) -> None:
    if resp.status_code in ok:
        return
    if resp.status_code >= 500 or resp.status_code == 429:
        raise _Retry(f"HTTP {resp.status_code}")
    raise DownloadError(f"{url}: HTTP {resp.status_code}")
