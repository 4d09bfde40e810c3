"""The local result server (real uvicorn on 127.0.0.1), retention, and re-addressing."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio
import anyio.to_thread
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_bacalhau_publish.blocks import LocalResultServer
from prefect_bacalhau_publish.retention import is_archive_name, prune
from prefect_bacalhau_publish.server import (
    RangeNotSatisfiable,
    parse_range,
    read_chunk,
    readdress,
    running_server,
)
from prefect_bacalhau_publish.specs import PublishedResult

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
DAY = 86400.0


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=10.0)


def poll(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until `condition()` holds (polling), failing with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def raw_request(base: str, target: bytes, method: bytes = b"GET", host: bytes = b"x") -> tuple[int, bytes]:
    """Send `target` byte-for-byte as the request line's path (no client-side normalisation)."""
    parsed = urlparse(base)
    assert parsed.hostname is not None and parsed.port is not None
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.sendall(
            method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture()
def storage(tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture()
def server(storage: Path) -> Iterator[str]:
    with running_server(LocalResultServer(storage_dir=storage)) as base:
        yield base


@pytest.fixture()
def blob(storage: Path) -> bytes:
    """A 1 MiB archive-named file without a sidecar (the server hashes it itself)."""
    data = os.urandom(1024 * 1024 + 17)
    (storage / "e-blob.tar.gz").write_bytes(data)
    return data


# ------------------------------------------------------------------------------------ GET, HEAD, Range


def test_get_and_head_headers(server: str, blob: bytes) -> None:
    sha = hashlib.sha256(blob)
    with client() as http:
        got = http.get(f"{server}/e-blob.tar.gz")
        head = http.head(f"{server}/e-blob.tar.gz")
    assert got.status_code == 200 and got.content == blob
    assert got.headers["content-type"] == "application/gzip"
    assert got.headers["accept-ranges"] == "bytes"
    assert got.headers["etag"] == f'"{sha.hexdigest()}"'
    assert got.headers["repr-digest"] == f"sha-256=:{base64.b64encode(sha.digest()).decode()}:"
    assert got.headers["digest"] == f"sha-256={base64.b64encode(sha.digest()).decode()}"
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(blob))
    assert head.headers["etag"] == got.headers["etag"]


def test_sidecar_digest_is_used(server: str, storage: Path) -> None:
    (storage / "e-s.tar.gz").write_bytes(b"payload")
    (storage / "e-s.tar.gz.sha256").write_text("ab" * 32 + "  e-s.tar.gz\n")
    with client() as http:
        response = http.head(f"{server}/e-s.tar.gz")
    assert response.headers["etag"] == f'"{"ab" * 32}"'  # no rehash: the sidecar is trusted


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=0-99", (0, 99)),
        ("bytes=262000-600000", (262000, 600000)),  # crosses server chunk boundaries
        ("bytes=1048000-", (1048000, 1024 * 1024 + 16)),
        ("bytes=-17", (1024 * 1024, 1024 * 1024 + 16)),
        ("bytes=5-99999999", (5, 1024 * 1024 + 16)),  # end past the file is clamped
    ],
)
def test_range_206(server: str, blob: bytes, header: str, span: tuple[int, int]) -> None:
    with client() as http:
        response = http.get(f"{server}/e-blob.tar.gz", headers={"Range": header})
    first, last = span
    assert response.status_code == 206
    assert response.content == blob[first : last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(blob)}"
    assert response.headers["content-length"] == str(last + 1 - first)


@pytest.mark.parametrize("header", ["bytes=2000000-", "bytes=1048593-1048600", "bytes=-0"])
def test_range_416(server: str, blob: bytes, header: str) -> None:
    with client() as http:
        response = http.get(f"{server}/e-blob.tar.gz", headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(blob)}"


@pytest.mark.parametrize("header", ["items=0-1", "bytes=9-3", "bytes=x-y", "bytes=0-1,x-y"])
def test_ignored_range_sends_whole_file(server: str, blob: bytes, header: str) -> None:
    with client() as http:
        response = http.get(f"{server}/e-blob.tar.gz", headers={"Range": header})
    assert response.status_code == 200 and response.content == blob


def test_multiple_ranges_are_multipart_byteranges(server: str, blob: bytes) -> None:
    """Several ranges get RFC 9110's `multipart/byteranges` answer (Starlette's FileResponse)."""
    import email.parser

    with client() as http:
        response = http.get(f"{server}/e-blob.tar.gz", headers={"Range": "bytes=0-1,300000-300009,-5"})
    assert response.status_code == 206
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + response.content
    )
    parts = [(p["Content-Range"], p.get_payload(decode=True)) for p in message.get_payload()]
    size = len(blob)
    assert parts == [
        (f"bytes 0-1/{size}", blob[0:2]),
        (f"bytes 300000-300009/{size}", blob[300000:300010]),
        (f"bytes {size - 5}-{size - 1}/{size}", blob[-5:]),
    ]


def test_empty_file(server: str, storage: Path) -> None:
    (storage / "e-empty.tar.gz").write_bytes(b"")
    with client() as http:
        whole = http.get(f"{server}/e-empty.tar.gz")
        ranged = http.get(f"{server}/e-empty.tar.gz", headers={"Range": "bytes=0-"})
    assert whole.status_code == 200 and whole.content == b"" and whole.headers["content-length"] == "0"
    assert ranged.status_code == 416


def test_etag_conditionals(server: str, blob: bytes) -> None:
    url = f"{server}/e-blob.tar.gz"
    etag = f'"{hashlib.sha256(blob).hexdigest()}"'
    with client() as http:
        for value in (etag, f"W/{etag}", "*", f'"other", {etag}'):
            response = http.get(url, headers={"If-None-Match": value})
            assert response.status_code == 304, value
            assert response.content == b"" and response.headers["etag"] == etag
        assert http.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
        assert http.head(url, headers={"If-None-Match": etag}).status_code == 304
        matching = http.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        stale = http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert matching.status_code == 206 and matching.content == blob[:10]
    assert stale.status_code == 200 and stale.content == blob  # resource changed: whole file


def test_any_host_header_is_answered(server: str, blob: bytes) -> None:
    status, body = raw_request(server, b"/e-blob.tar.gz", host=b"moved.example.org:9999")
    assert status == 200 and body == blob


def test_only_get_and_head(server: str, blob: bytes) -> None:
    with client() as http:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert http.request(method, f"{server}/e-blob.tar.gz").status_code == 405
    assert len(blob) > 0


def test_no_directory_listing(server: str, blob: bytes, storage: Path) -> None:
    (storage / "sub").mkdir()
    (storage / "sub" / "x.tar.gz").write_bytes(b"nested")
    with client() as http:
        for path in ("/", "/sub", "/sub/", "/sub/x.tar.gz", "/e-blob.tar.gz/", "/e-blob.tar.gz.sha256"):
            response = http.get(server + path)
            assert response.status_code == 404, path
            assert b"e-blob" not in response.content and b"nested" not in response.content


# --------------------------------------------------------------------------------------------- traversal


@pytest.fixture()
def outside(tmp_path: Path, storage: Path) -> bytes:
    """A secret file outside the storage folder, and links to it (and to /etc/passwd) planted inside."""
    secret = b"TOP-SECRET-" + os.urandom(8).hex().encode()
    (tmp_path / "outside").mkdir()
    target = tmp_path / "outside" / "secret.tar.gz"
    target.write_bytes(secret)
    (storage / "passwd.tar.gz").symlink_to("/etc/passwd")
    (storage / "outside.tar.gz").symlink_to(target)
    (storage / "relative.tar.gz").symlink_to("../outside/secret.tar.gz")
    os.link(target, storage / "hard.tar.gz")
    (storage / "dir.tar.gz").mkdir()
    os.mkfifo(storage / "fifo.tar.gz")
    (storage / ".e-tmp.tar.gz").write_bytes(b"half written")
    return secret


TRAVERSALS = [
    b"/../../../../etc/passwd",
    b"/..%2f..%2f..%2fetc%2fpasswd",
    b"/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    b"/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    b"/%252e%252e/%252e%252e/etc/passwd",
    b"/%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    b"/..\\..\\..\\etc\\passwd",
    b"/%5c..%5c..%5cetc%5cpasswd",
    b"//etc/passwd",
    b"/etc/passwd",
    b"http://127.0.0.1/../../../etc/passwd",
    b"/../outside/secret.tar.gz",
    b"/%2e%2e/outside/secret.tar.gz",
    b"/%2e%2e%2foutside%2fsecret.tar.gz",
    b"/.%2e/outside/secret.tar.gz",
    b"/e-ok.tar.gz%00",
    b"/e-ok.tar.gz%00.txt",
    b"/%00",
    b"/e-ok.tar.gz\x00",
    b"/passwd.tar.gz",  # symlink to /etc/passwd
    b"/outside.tar.gz",  # absolute symlink to a file outside
    b"/relative.tar.gz",  # relative symlink out of the folder
    b"/hard.tar.gz",  # hard link to a file outside
    b"/dir.tar.gz",
    b"/fifo.tar.gz",
    b"/.e-tmp.tar.gz",
    b"/./e-ok.tar.gz",
]


def test_traversal_refused(server: str, storage: Path, outside: bytes, tmp_path: Path) -> None:
    (storage / "e-ok.tar.gz").write_bytes(b"fine")
    assert raw_request(server, b"/e-ok.tar.gz") == (200, b"fine")  # the raw client itself works
    absolute = b"/" + str(tmp_path / "outside" / "secret.tar.gz").encode()
    passwd = Path("/etc/passwd").read_bytes()[:32]
    for target in [*TRAVERSALS, absolute, b"/" + str(storage / "e-ok.tar.gz").encode()]:
        for method in (b"GET", b"HEAD"):
            status, body = raw_request(server, target, method)
            assert status in (400, 404), (target, method, status)
            assert outside not in body and passwd not in body, target
            assert b"fine" not in body
    assert (storage / "outside.tar.gz").is_symlink()  # nothing was "fixed" by deleting


def test_symlinked_result_is_not_followed_even_inside(server: str, storage: Path) -> None:
    (storage / "e-real.tar.gz").write_bytes(b"real")
    (storage / "e-alias.tar.gz").symlink_to("e-real.tar.gz")
    with client() as http:
        assert http.get(f"{server}/e-real.tar.gz").content == b"real"
        assert http.get(f"{server}/e-alias.tar.gz").status_code == 404


def test_access_log_lines(server: str, blob: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="prefect_bacalhau_publish.server.access")
    with client() as http:
        http.get(f"{server}/e-blob.tar.gz", headers={"Range": "bytes=0-9"})
        http.get(f"{server}/nope")

    def lines() -> list[dict[str, Any]]:
        return [
            json.loads(r.getMessage())
            for r in caplog.records
            if r.name == "prefect_bacalhau_publish.server.access"
        ]

    poll(lambda: len(lines()) >= 2, "two access log lines")
    first, second = lines()[:2]
    assert first["method"] == "GET" and first["path"] == "/e-blob.tar.gz"
    assert first["status"] == 206 and first["bytes"] == 10
    assert second["status"] == 404 and second["path"] == "/nope"
    assert isinstance(first["duration_ms"], float) and first["client"].startswith("127.0.0.1:")


def _counting_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return calls


def test_read_chunk_reads_cached_data_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1 << 20)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    calls = _counting_threads(monkeypatch)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        assert anyio.run(read_chunk, fd, 4096, 100) == data[100:4196]
        assert calls == []  # just written, so in the page cache: read inline
        # Dropping the pages is only advice (a busy or overlay filesystem may keep them): whichever way
        # the read goes, it returns the right bytes, with at most one trip to a worker thread.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert anyio.run(read_chunk, fd, 4096, 8192, bytearray(65536)) == data[8192:12288]
        assert len(calls) <= 1
        assert anyio.run(read_chunk, fd, 4096, len(data)) == b""
    finally:
        os.close(fd)


@pytest.mark.parametrize("errno_", [errno.EAGAIN, errno.EOPNOTSUPP])
def test_read_chunk_reads_uncached_data_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_: int
) -> None:
    # The kernel cannot be made to evict pages on demand everywhere, so the "not cached" (EAGAIN) and
    # "cannot say" (EOPNOTSUPP) answers of preadv(RWF_NOWAIT) are simulated here; the read is real.
    data = os.urandom(1 << 16)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    calls = _counting_threads(monkeypatch)

    def refuse(fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(os, "preadv", refuse)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert anyio.run(read_chunk, fd, 4096, 8192, bytearray(65536)) == data[8192:12288]
        assert len(calls) == 1  # read in a worker thread
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------- parse_range


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 50),
    first=st.one_of(st.none(), st.integers(0, 60)),
    last=st.one_of(st.none(), st.integers(0, 60)),
)
def test_parse_range_matches_slicing(size: int, first: int | None, last: int | None) -> None:
    data = bytes(range(size))
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    if first is None and last is None:
        assert parse_range(header, size) is None
        return
    if first is None:
        assert last is not None
        expected = data[-last:] if last else b""
    elif last is not None and last < first:
        assert parse_range(header, size) is None
        return
    else:
        expected = data[first : None if last is None else last + 1]
    if not expected:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    span = parse_range(header, size)
    assert span is not None
    assert data[span[0] : span[1] + 1] == expected


def test_parse_range_huge_numbers() -> None:
    assert parse_range("bytes=" + "9" * 5000 + "-", 10) is None  # int() refuses: header ignored
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=99999999999999999999-", 10)


# ------------------------------------------------------------------------------------------- retention


def make(storage: Path, name: str, size: int, age_s: float, sidecar: bool = False) -> Path:
    path = storage / name
    path.write_bytes(b"x" * size)
    when = NOW.timestamp() - age_s
    os.utime(path, (when, when))
    if sidecar:
        side = storage / (name + ".sha256")
        side.write_text("0" * 64 + f"  {name}\n")
        os.utime(side, (when, when))
    return path


def names(storage: Path) -> set[str]:
    return {p.name for p in storage.iterdir()}


def test_prune_by_age(storage: Path) -> None:
    make(storage, "e-old.tar.gz", 10, 10 * DAY, sidecar=True)
    make(storage, "e-mid.tar.gz", 10, 2 * DAY)
    make(storage, "e-new.tar.gz", 10, 3600, sidecar=True)
    deleted = prune(storage, max_age=timedelta(days=1), max_total_bytes=None, now=NOW)
    assert deleted == [storage / "e-old.tar.gz", storage / "e-mid.tar.gz"]
    assert names(storage) == {"e-new.tar.gz", "e-new.tar.gz.sha256"}


def test_prune_by_size_oldest_first(storage: Path) -> None:
    for index, size in enumerate((100, 200, 300, 400)):
        make(storage, f"e-{index}.tar.gz", size, 1000 - index)
    deleted = prune(storage, max_age=None, max_total_bytes=700, now=NOW)
    assert deleted == [storage / "e-0.tar.gz", storage / "e-1.tar.gz"]  # 1000 → 900 → 700: stop
    assert names(storage) == {"e-2.tar.gz", "e-3.tar.gz"}
    assert prune(storage, max_age=None, max_total_bytes=700, now=NOW) == []


def test_prune_counts_sidecars_and_removes_orphans(storage: Path) -> None:
    make(storage, "e-a.tar.gz", 100, 50, sidecar=True)  # 100 + 80 bytes
    make(storage, "e-b.tar.gz", 100, 10)
    (storage / "e-gone.tar.gz.sha256").write_text("0" * 64)
    deleted = prune(storage, max_age=None, max_total_bytes=250, now=NOW)
    assert deleted == [storage / "e-a.tar.gz"]
    assert names(storage) == {"e-b.tar.gz"}


def test_prune_age_then_size(storage: Path) -> None:
    make(storage, "e-ancient.tar.gz", 10, 30 * DAY)
    make(storage, "e-1.tar.gz", 500, 300)
    make(storage, "e-2.tar.gz", 500, 200)
    make(storage, "e-3.tar.gz", 500, 100)
    deleted = prune(storage, max_age=timedelta(days=7), max_total_bytes=1000, now=NOW)
    assert [p.name for p in deleted] == ["e-ancient.tar.gz", "e-1.tar.gz"]


def test_prune_touches_only_results(storage: Path, tmp_path: Path) -> None:
    keep = {
        ".e-x.tar.gz.k2j3.tmp": 10_000,  # a publish in progress
        ".e-x.tar.gz.k2j3.sha256.tmp": 80,
        "notes.txt": 10_000,
        "e-x.tar": 10_000,
    }
    for name, size in keep.items():
        make(storage, name, size, 100 * DAY)
    outside = tmp_path / "precious.tar.gz"
    outside.write_bytes(b"keep me")
    (storage / "e-link.tar.gz").symlink_to(outside)
    (storage / "e-dir.tar.gz").mkdir()
    make(storage, "e-result.tar.gz", 10, 100 * DAY)
    deleted = prune(storage, max_age=timedelta(0), max_total_bytes=0, now=NOW)
    assert deleted == [storage / "e-result.tar.gz"]
    assert names(storage) == {*keep, "e-link.tar.gz", "e-dir.tar.gz"}
    assert outside.read_bytes() == b"keep me"


def test_prune_skips_names_in_use(storage: Path) -> None:
    make(storage, "e-busy.tar.gz", 1000, 10 * DAY)
    make(storage, "e-idle.tar.gz", 10, 5 * DAY)
    make(storage, "e-new.tar.gz", 10, 60)
    deleted = prune(
        storage, max_age=timedelta(days=1), max_total_bytes=500, now=NOW, in_use={"e-busy.tar.gz"}
    )
    # e-busy is old and over budget but being served; it still counts, so e-new goes too
    assert deleted == [storage / "e-idle.tar.gz", storage / "e-new.tar.gz"]
    assert names(storage) == {"e-busy.tar.gz"}


def test_prune_disabled_or_missing_folder(storage: Path, tmp_path: Path) -> None:
    make(storage, "e-old.tar.gz", 10, 100 * DAY)
    assert prune(storage, max_age=None, max_total_bytes=None, now=NOW) == []
    assert prune(tmp_path / "missing", max_age=timedelta(0), max_total_bytes=0) == []
    assert names(storage) == {"e-old.tar.gz"}


def test_server_prunes_periodically_but_not_open_downloads(storage: Path) -> None:
    config = LocalResultServer(storage_dir=storage, max_age=timedelta(hours=1))
    big = storage / "e-big.tar.gz"
    with open(big, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: more than the socket buffers hold
    with running_server(config, prune_interval=0.02) as base, client() as http:
        with http.stream("GET", f"{base}/e-big.tar.gz") as response:
            assert response.status_code == 200
            chunks = response.iter_raw(65536)  # kept referenced: dropping it would close the stream
            assert next(chunks)  # the download is now in progress
            two_hours_ago = time.time() - 7200
            os.utime(big, (two_hours_ago, two_hours_ago))
            old = make(storage, "e-old.tar.gz", 10, 0)
            os.utime(old, (two_hours_ago, two_hours_ago))
            poll(lambda: not old.exists(), "the retention task to delete e-old.tar.gz")
            assert big.exists()  # same pass saw it expired, but it is being served
        poll(lambda: not big.exists(), "e-big.tar.gz to be deleted once its download ended")


def test_is_archive_name() -> None:
    assert is_archive_name("e-5f0c.tar.gz") and is_archive_name("job_1.attempt-2.tar.gz")
    for bad in (".e.tar.gz", "a..b.tar.gz", "a/b.tar.gz", "a b.tar.gz", "e.tgz", "x" * 201 + ".tar.gz"):
        assert not is_archive_name(bad), bad


# ------------------------------------------------------------------------------------------ readdress


def test_readdress_published_result() -> None:
    result = PublishedResult.model_validate(
        {"Type": "urlDownload", "Params": {"URL": "http://10.0.0.5:6001/e-1.tar.gz"}}
    )
    moved = readdress(result, "http://10.0.0.5:6001/", "http://node7.lan:7001")
    assert moved.to_bacalhau() == {
        "Type": "urlDownload",
        "Params": {"URL": "http://node7.lan:7001/e-1.tar.gz"},
    }
    assert readdress(result, "http://10.0.0.5:600", "http://x:1") == result  # not a base of the URL


def test_readdress_json_text() -> None:
    text = json.dumps(
        [
            {"Type": "urlDownload", "Params": {"URL": "http://old:6001/e-1.tar.gz"}},
            {
                "Source": {
                    "Type": "urlDownload",
                    "Params": {"url": "http://old:6001/e-2.tar.gz", "Extract": True},
                }
            },
            {"Type": "urlDownload", "Params": {"URL": "http://other:6001/e-3.tar.gz"}},
            {"Type": "s3", "Params": {"Bucket": "b", "Key": "http://old:6001/not-a-url-field"}},
        ]
    )
    out = json.loads(readdress(text, "http://old:6001", "http://new:6002"))
    assert out[0]["Params"]["URL"] == "http://new:6002/e-1.tar.gz"
    assert out[1]["Source"]["Params"] == {"url": "http://new:6002/e-2.tar.gz", "Extract": True}
    assert out[2]["Params"]["URL"] == "http://other:6001/e-3.tar.gz"
    assert out[3]["Params"]["Key"] == "http://old:6001/not-a-url-field"


def test_serve_in_foreground_logs_json_lines(storage: Path) -> None:
    (storage / "e-fg.tar.gz").write_bytes(b"foreground")
    code = (
        "import sys; from pathlib import Path; from prefect_bacalhau_publish.blocks import LocalResultServer; "
        "from prefect_bacalhau_publish.server import serve; "
        "serve(LocalResultServer(storage_dir=Path(sys.argv[1]), port=1), host='127.0.0.1', port=0)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(storage)], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    watchdog = threading.Timer(60, proc.kill)  # a hang ends the output, so the test fails instead
    watchdog.start()
    try:
        lines = iter(proc.stderr.readline, "")
        started = next(line for line in lines if "running on" in line)  # uvicorn's startup line
        base = re.search(r"http://127\.0\.0\.1:\d+", started)
        assert base is not None
        with client() as http:
            assert http.get(f"{base[0]}/e-fg.tar.gz").content == b"foreground"
        access = json.loads(next(line for line in lines if line.startswith("{")))
        assert access["path"] == "/e-fg.tar.gz" and access["status"] == 200 and access["bytes"] == 10
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(15)


def test_running_server_binds_given_port(storage: Path) -> None:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (storage / "e-p.tar.gz").write_bytes(b"p")
    with running_server(LocalResultServer(storage_dir=storage), port=port) as base, client() as http:
        assert base == f"http://127.0.0.1:{port}"
        assert http.get(f"{base}/e-p.tar.gz").content == b"p"
    with pytest.raises(httpx.ConnectError), client() as http:
        http.get(f"{base}/e-p.tar.gz")  # stopped on exit
