"""Artifact downloads: resumable with Range, exact bytes, ETag, 416 and refusal of bad paths."""

from __future__ import annotations

import hashlib
import os
import socket

import httpx
import pytest
from hypothesis import given, strategies as st

from tandem.cloud_hub.rest.ranges import RangeNotSatisfiable, parse_range

SIZE = 3 * 1024 * 1024 + 17  # not a multiple of any chunk size


@pytest.fixture
def blob(running_hub, tmp_path):
    data = os.urandom(SIZE)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    sha, size = running_hub.artifacts.put_file(src)
    assert size == SIZE
    return sha, data


@pytest.fixture
def http(running_hub):
    token = running_hub.tokens.create("reader", "read").token
    with httpx.Client(base_url=running_hub.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
        yield c


def test_interrupted_download_resumes_to_the_exact_bytes(http, blob, tmp_path):
    sha, data = blob
    part = tmp_path / "download.part"
    with http.stream("GET", f"/v1/artifacts/{sha}") as r:
        assert r.status_code == 200 and r.headers["content-length"] == str(SIZE)
        etag = r.headers["etag"]
        with open(part, "wb") as fh:
            for chunk in r.iter_bytes():
                fh.write(chunk)
                if fh.tell() > SIZE // 3:
                    break  # the connection drops mid-file
    have = part.stat().st_size
    assert 0 < have < SIZE
    r = http.get(f"/v1/artifacts/{sha}", headers={"Range": f"bytes={have}-", "If-Range": etag})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {have}-{SIZE - 1}/{SIZE}"
    assert int(r.headers["content-length"]) == SIZE - have == len(r.content)
    with open(part, "ab") as fh:
        fh.write(r.content)
    assert hashlib.sha256(part.read_bytes()).hexdigest() == sha
    assert part.read_bytes() == data


def test_etag_is_the_sha256_and_if_none_match_gives_304(http, blob):
    sha, _ = blob
    head = http.head(f"/v1/artifacts/{sha}")
    assert head.status_code == 200 and head.headers["etag"] == f'"{sha}"'
    assert head.headers["content-length"] == str(SIZE) and head.headers["accept-ranges"] == "bytes"
    assert http.get(f"/v1/artifacts/{sha}", headers={"If-None-Match": f'"{sha}"'}).status_code == 304


def test_stale_if_range_gets_the_whole_file(http, blob):
    sha, data = blob
    r = http.get(f"/v1/artifacts/{sha}", headers={"Range": "bytes=100-", "If-Range": '"' + "f" * 64 + '"'})
    assert r.status_code == 200 and r.content == data


@pytest.mark.parametrize(
    "header,first,last",
    [
        ("bytes=0-0", 0, 0),
        ("bytes=-10", SIZE - 10, SIZE - 1),
        ("bytes=10-19", 10, 19),
        (f"bytes={SIZE - 5}-{SIZE + 100}", SIZE - 5, SIZE - 1),
    ],
)
def test_ranges_return_exactly_the_requested_bytes(http, blob, header, first, last):
    sha, data = blob
    r = http.get(f"/v1/artifacts/{sha}", headers={"Range": header})
    assert r.status_code == 206
    assert r.content == data[first : last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert r.headers["content-length"] == str(last - first + 1)


@pytest.mark.parametrize(
    "header", [f"bytes={SIZE}-", "bytes=20-10", "bytes=0-1,5-6", "items=0-1", "bytes=-0", "bytes=-"]
)
def test_unsatisfiable_or_malformed_ranges_get_416(http, blob, header):
    sha, _ = blob
    r = http.get(f"/v1/artifacts/{sha}", headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{SIZE}"


def test_unknown_hashes_404_and_non_hashes_are_rejected(http, running_hub):
    assert http.get("/v1/artifacts/" + "a" * 64).status_code == 404
    assert http.get("/v1/artifacts/" + "A" * 64).status_code == 422
    assert http.get("/v1/artifacts/not-a-hash").status_code == 422


@pytest.mark.sqlite_only  # the secret it must not leak is the data dir's hub.db
def test_path_traversal_is_rejected(running_hub, http):
    # Send the raw request line so no client normalises the dots away.
    token = http.headers["Authorization"]
    secret = running_hub.config.data_dir / "hub.db"
    port = running_hub.http_port
    for target in ("/v1/artifacts/..%2F..%2Fhub.db", "/v1/artifacts/../../hub.db", "/v1/artifacts/%2e%2e%2fhub.db"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n".encode()
            )
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        status = int(reply.split(b" ", 2)[1])
        assert status in (404, 422), (target, reply[:200])
        assert secret.read_bytes()[:16] not in reply


@given(size=st.integers(0, 10_000), start=st.integers(0, 12_000), end=st.one_of(st.none(), st.integers(0, 12_000)))
def test_parse_range_is_total_and_stays_inside_the_file(size, start, end):
    header = f"bytes={start}-" + ("" if end is None else str(end))
    try:
        r = parse_range(header, size)
    except RangeNotSatisfiable:
        assert start >= size or (end is not None and end < start)
        return
    assert 0 <= r.start <= r.end < size and r.length == r.end - r.start + 1


@given(st.text(max_size=60))
def test_parse_range_never_crashes_on_garbage(header):
    try:
        parse_range(header, 1000)
    except RangeNotSatisfiable:
        pass
