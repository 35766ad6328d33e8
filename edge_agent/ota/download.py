"""HTTP downloads into the staging area, resumable with Range, bounded in size, retries and time.

A file grows in `<path>.part`; after an interruption (a dropped connection, or the agent
killed and restarted) the next attempt asks for `Range: bytes=<have>-` with `If-Range`
on the expected sha256 (the hub's ETag), so nothing already received is fetched again.
The `.part` is renamed to its final name only at the expected size; hashes are checked
by `verify`.

https:// is verified against `tls.ca` (the fleet CA the agent already holds for MQTT), and the
device's client certificate is presented, so a hub may demand it; without `tls`, against the system
trust store. A 429 waits the hub's Retry-After without using up an attempt, within
`max_rate_limited_s`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx

from tandem.edge_agent.ota.errors import DownloadError
from tandem.protocols import limits
from tandem.protocols.tls import TlsFiles

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = limits.MAX_MANIFEST_BYTES
_MAX_UNREACHABLE_WAIT_S = 5.0  # between tries while the hub refuses connections


@dataclass(frozen=True)
class DownloadConfig:
    token: str | None = None  # bearer token for the hub (scope read)
    timeout_s: float = 30.0  # per request (connect and between bytes)
    attempts: int = 5  # per file, counting the first
    backoff_s: float = 0.2  # doubled after each failed attempt
    chunk_bytes: int = 256 * 1024
    max_file_bytes: int = limits.MAX_ARTIFACT_BYTES
    rate_limit_bps: float | None = None  # cap for metered links; None: as fast as the link goes
    tls: TlsFiles | None = None  # https: trust `ca`, present cert+key; None: system trust store
    max_rate_limited_s: float = 120.0  # total time a transfer may wait on the hub's 429 Retry-After
    # total time a transfer keeps retrying a hub that refuses connections (restarting after a crash),
    # beyond `attempts`: a hub SIGKILLed mid-rollout failed every device it had just commanded
    max_unreachable_s: float = 300.0


class Downloader:
    """One HTTP client per OTA worker; `cancel` stops a transfer between chunks."""

    def __init__(
        self,
        config: DownloadConfig,
        cancel: threading.Event | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.cancel = cancel or threading.Event()
        self.on_progress = on_progress
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self._http = httpx.Client(
            headers=headers, timeout=config.timeout_s, follow_redirects=False, verify=https_context(config.tls)
        )

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
        waited = 0.0  # on 429s
        unreachable_since: float | None = None  # the hub refusing connections: restarting, not broken
        n = 1
        while n <= self.config.attempts:
            if self.cancel.is_set():
                raise DownloadError(f"{url}: cancelled")
            try:
                return attempt()
            except _RateLimited as exc:
                if waited + exc.retry_after_s > self.config.max_rate_limited_s:
                    raise DownloadError(
                        f"{url}: the hub kept answering 429 (rate limited) for {waited:.0f} s; "
                        "give this device its own token or raise the hub's rest_rate_per_s"
                    ) from exc
                log.info("download rate limited url=%s retry_after_s=%.1f", url, exc.retry_after_s)
                waited += exc.retry_after_s
                self.cancel.wait(exc.retry_after_s)
                continue
            except httpx.ConnectError as exc:
                if _is_certificate_error(exc):
                    raise DownloadError(
                        f"{url}: the hub's TLS certificate does not verify ({exc}); the agent trusts "
                        f"{self.config.tls.ca if self.config.tls else 'the system trust store'} "
                        "(telemetry.mqtt_tls_ca)"
                    ) from exc
                now = time.monotonic()
                unreachable_since = unreachable_since if unreachable_since is not None else now
                if now - unreachable_since >= self.config.max_unreachable_s:
                    raise DownloadError(
                        f"{url}: the hub refused connections for {now - unreachable_since:.0f} s "
                        f"(max_unreachable_s={self.config.max_unreachable_s:g}; {exc})"
                    ) from exc
                log.info("download: hub unreachable url=%s error=%s; retrying", url, exc)
                self.cancel.wait(min(delay, _MAX_UNREACHABLE_WAIT_S))
                delay *= 2
                continue
            except (httpx.TransportError, _Retry) as exc:
                unreachable_since = None
                if _is_certificate_error(exc):  # no retry can fix a certificate; say what to check
                    raise DownloadError(
                        f"{url}: the hub's TLS certificate does not verify ({exc}); the agent trusts "
                        f"{self.config.tls.ca if self.config.tls else 'the system trust store'} "
                        "(telemetry.mqtt_tls_ca)"
                    ) from exc
                if n == self.config.attempts:
                    raise DownloadError(f"{url}: failed after {n} attempts ({exc})") from exc
                log.info("download retry url=%s attempt=%d error=%s", url, n, exc)
                self.cancel.wait(delay)
                delay *= 2
            n += 1
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
                raise DownloadError(
                    f"{url}: asked for bytes {have}-, got Content-Range {resp.headers.get('content-range')!r}"
                )
            try:
                with open(part, "r+b" if have else "wb") as fh:
                    fh.seek(have)
                    fh.truncate()
                    received = 0
                    for chunk in resp.iter_bytes(self.config.chunk_bytes):
                        if self.cancel.is_set():
                            raise DownloadError(f"{url}: cancelled")
                        if have + len(chunk) > size:
                            raise DownloadError(
                                f"{part.name[:-5]}: the server sent more than the manifest's {size} bytes"
                            )
                        fh.write(chunk)
                        have += len(chunk)
                        received += len(chunk)
                        if self.on_progress:
                            self.on_progress(len(chunk))
                        self._throttle(received, started)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:  # a full or read-only disk: name the place and what it needs
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{part.parent}: cannot write the download ({exc.strerror or exc}); {size - have} of its "
                    f"{size} bytes still to write, {_free_bytes(part.parent)} free: free space under the OTA "
                    "store and send the update again (it resumes)"
                ) from exc
        if have != size:
            raise _Retry(f"connection ended at {have} of {size} bytes")

    def _throttle(self, received: int, started: float) -> None:
        rate = self.config.rate_limit_bps
        if rate:
            ahead = received / rate - (time.monotonic() - started)
            if ahead > 0:
                self.cancel.wait(ahead)


def _free_bytes(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free} bytes"
    except OSError:
        return "unknown bytes"


def https_context(tls: TlsFiles | None) -> ssl.SSLContext:
    """Verify the hub against tls.ca and present tls.cert/key; without tls, the system trust store.

    Unused for http:// (development; the OTA client already warns that it runs in plain text)."""
    if tls is None:
        return ssl.create_default_context()
    try:
        return tls.client_context()
    except (OSError, ValueError) as exc:  # TlsConfigError is a ValueError, ssl.SSLError an OSError
        raise DownloadError(f"https: cannot use the TLS files {tls.ca}, {tls.cert}, {tls.key} ({exc})") from exc


class _Retry(Exception):
    """A transient failure worth another attempt (short read, 5xx)."""


class _RateLimited(Exception):
    """HTTP 429: wait the server's Retry-After, then ask again."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"HTTP 429, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


MAX_RETRY_AFTER_S = 30.0


def _retry_after(resp: httpx.Response) -> float:
    """Retry-After in seconds (the hub sends an integer), bounded to [0.1, MAX_RETRY_AFTER_S]; 1 s if absent."""
    try:
        value = float(resp.headers.get("retry-after", "1"))
    except ValueError:
        value = 1.0
    return min(MAX_RETRY_AFTER_S, max(0.1, value)) if value == value else 1.0  # NaN -> 1


def _is_certificate_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps the ssl error; follow a bounded chain of causes
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_status(url: str, resp: httpx.Response, ok: tuple[int, ...]) -> None:
    if resp.status_code in ok:
        return
    if resp.status_code == 429:
        raise _RateLimited(_retry_after(resp))
    if resp.status_code >= 500:
        raise _Retry(f"HTTP {resp.status_code}")
    raise DownloadError(f"{url}: HTTP {resp.status_code}")
