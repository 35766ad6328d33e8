"""Strict at the REST door: unknown fields are refused by name, and bodies over the limit are
refused before they are read (a real hub on loopback)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tandem.cloud_hub.config import HubConfig
from tandem.cloud_hub.hub import Hub


@pytest.fixture
def hub(tmp_path: Path):
    hub = Hub(
        HubConfig.from_keys(
            {
                "data_dir": tmp_path / "hub",
                "http.port": 0,
                "grpc.port": 0,
                "mqtt.url": "mqtt://127.0.0.1:1",
                "telemetry.enabled": False,
                "http.max_json_body_bytes": 64 * 1024,
            }
        )
    ).start()
    token = hub.tokens.create("admin", "admin").token
    try:
        yield hub, {"Authorization": f"Bearer {token}"}
    finally:
        hub.stop()


def test_unknown_fields_are_refused_by_name_never_dropped(hub):
    h, headers = hub
    url = h.http_url
    r = httpx.post(
        f"{url}/v1/rollouts",
        headers=headers,
        timeout=10,
        json={"model": "digits", "version": "1.0.0", "selct": {"profile": "cpu-arm"}},
    )
    assert r.status_code == 422 and "selct" in r.json()["detail"], r.text
    r = httpx.post(
        f"{url}/v1/rollouts",
        headers=headers,
        timeout=10,
        json={"model": "digits", "version": "1.0.0", "gates": {"min_devicez": 50}},
    )
    assert r.status_code == 422 and "gates.min_devicez" in r.json()["detail"], r.text
    r = httpx.post(
        f"{url}/v1/devices",
        headers=headers,
        timeout=10,
        json={"device_id": "cam-1", "profile": "cpu-x86", "agent_version": "0.1.0", "tagz": {"a": "b"}},
    )
    assert r.status_code == 422 and "tagz" in r.json()["detail"], r.text
    r = httpx.post(f"{url}/v1/tokens", headers=headers, timeout=10, json={"name": "x", "scope": "read", "admin": True})
    assert r.status_code == 422 and "admin" in r.json()["detail"], r.text
    r = httpx.post(
        f"{url}/v1/devices",
        headers=headers,
        timeout=10,
        json={"device_id": "cam-1", "profile": "cpu-x86", "agent_version": "0.1.0"},
    )
    assert r.status_code == 201, r.text


def _raw(port: int, head: bytes, body: bytes = b"") -> tuple[bytes, float]:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data, time.perf_counter() - t0


def test_a_body_over_the_limit_is_refused_before_it_is_read(hub):
    h, headers = hub
    port = int(h.http_url.rsplit(":", 1)[1])
    auth = headers["Authorization"].encode()
    # Declares 500 MB and sends none of it: answered at once from the header alone.
    head = (
        b"POST /v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + auth
        + b"\r\nContent-Type: application/json\r\nContent-Length: 500000000\r\n\r\n"
    )
    reply, seconds = _raw(port, head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert seconds < 2
    # Chunked, no length: cut off once the count passes the limit.
    chunk = b"[" + b"1," * 40_000
    head = (
        b"POST /v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: "
        + auth
        + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(3))
    reply, _ = _raw(port, head, body)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # Under the limit, the same route still answers normally.
    r = httpx.post(f"{h.http_url}/v1/devices", headers=headers, timeout=10, json={"device_id": "x" * 200})
    assert r.status_code == 422
    # Uploads are not JSON: they stream under max_upload_mb and the archive limits instead.
    r = httpx.post(
        f"{h.http_url}/v1/models",
        headers={**headers, "Content-Type": "application/gzip"},
        timeout=30,
        content=b"\0" * (200 * 1024),
    )
    assert r.status_code == 422 and "manifest" in r.json()["detail"], r.text  # read whole, refused as a model


def _bomb(declared: int, body: int) -> bytes:
    """A .tar.gz whose one member declares `declared` bytes (its first `body` zeros present): a gzip bomb."""
    import gzip
    import io
    import tarfile

    info = tarfile.TarInfo("model/weights.bin")
    info.size = declared
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as gz:
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT))
        zeros = bytes(1 << 20)
        for _ in range(body >> 20):
            gz.write(zeros)
    return raw.getvalue()


def test_a_gzip_bomb_is_refused_at_once_writing_nothing_big(hub):
    h, headers = hub
    bomb = _bomb(3 * 1024**3, 64 * 1024**2)  # says 3 GiB, carries 64 MiB of zeros: ~64 KB on the wire
    assert len(bomb) < 200 * 1024
    t0 = time.perf_counter()
    r = httpx.post(
        f"{h.http_url}/v1/models", headers={**headers, "Content-Type": "application/gzip"}, timeout=30, content=bomb
    )
    seconds = time.perf_counter() - t0
    assert r.status_code == 413 and "unpacks to more than" in r.json()["detail"], r.text
    assert seconds < 1.0, seconds
    leftovers = [p for p in h.config.data_dir.rglob("*") if p.is_file() and p.stat().st_size > 1024**2]
    assert not [p for p in leftovers if "upload-" in str(p)], leftovers
    assert not list(h.config.data_dir.glob("upload-*"))
