"""The local publisher and the urlDownload input source, against the real result server on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import resource
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
import urllib3

from prefect_bacalhau_publish.archive import ArchiveInfo, write_archive
from prefect_bacalhau_publish.blocks import LocalResultServer
from prefect_bacalhau_publish.errors import (
    ChecksumMismatchError,
    FetchError,
    LocalPublishError,
    UnsafeArchiveError,
)
from prefect_bacalhau_publish.publishers import local as local_publisher
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.retention import prune
from prefect_bacalhau_publish.server import readdress, running_server
from prefect_bacalhau_publish.sources import fetch_source
from prefect_bacalhau_publish.sources.url import RESUMES, expected_sha256, file_name
from prefect_bacalhau_publish.specs import (
    ExecutionContext,
    PublishedResult,
    PublisherSpec,
    SourceSpec,
    URLParams,
)

LOCAL = PublisherSpec.model_validate({"Type": "local"})
MiB = 1024 * 1024


def ctx(execution_id: str = "e-42") -> ExecutionContext:
    return ExecutionContext(
        job_id="j-1", execution_id=execution_id, node_id="n-1", published_at=datetime(2024, 5, 6, tzinfo=UTC)
    )


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root → bytes (files) or None (folders)."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def url_of(result: PublishedResult) -> str:
    assert isinstance(result.params, URLParams)
    return result.params.url


def url_source(url: str, extract: bool | None = None) -> SourceSpec:
    params: dict[str, Any] = {"URL": url}
    if extract is not None:
        params["Extract"] = extract
    return SourceSpec.model_validate({"Type": "urlDownload", "Params": params})


@contextlib.contextmanager
def local_server(storage: Path, **fields: Any) -> Iterator[LocalResultServer]:
    """A running result server over `storage`; yields the block publishers use (with the real port)."""
    config = LocalResultServer(storage_dir=storage, **fields)
    with running_server(config) as base:
        yield config.model_copy(update={"port": int(base.rsplit(":", 1)[1])})


@pytest.fixture()
def storage(tmp_path: Path) -> Path:
    return tmp_path / "storage"


# ------------------------------------------------------------------------------------------- publisher


def test_round_trip(result_dir: Path, storage: Path, tmp_path: Path) -> None:
    with local_server(storage) as block:
        result = publish_to(result_dir, LOCAL, ctx(), local=block)
        assert result.to_bacalhau() == {
            "Type": "urlDownload",
            "Params": {"URL": f"http://127.0.0.1:{block.port}/e-42.tar.gz"},
        }
        dest = tmp_path / "fetched"
        assert fetch_source(result.to_input_source("/inputs/prev").source, dest, local=block) == dest
    assert tree(dest) == tree(result_dir)
    assert sorted(p.name for p in storage.iterdir()) == ["e-42.tar.gz", "e-42.tar.gz.sha256"]


def test_archive_sidecar_and_headers_agree(result_dir: Path, storage: Path) -> None:
    with local_server(storage) as block, httpx.Client(trust_env=False) as http:
        url = url_of(publish_to(result_dir, LOCAL, ctx(), local=block))
        response = http.get(url)
    body = (storage / "e-42.tar.gz").read_bytes()
    expected = io.BytesIO()
    write_archive(result_dir, expected)
    assert body == expected.getvalue() == response.content  # deterministic archive, served as written
    sha = hashlib.sha256(body)
    assert (storage / "e-42.tar.gz.sha256").read_text() == f"{sha.hexdigest()}  e-42.tar.gz\n"
    assert response.headers["etag"] == f'"{sha.hexdigest()}"'
    assert response.headers["repr-digest"] == f"sha-256=:{base64.b64encode(sha.digest()).decode()}:"


def test_storage_folder_created_private(result_dir: Path, tmp_path: Path) -> None:
    storage = tmp_path / "a" / "b" / "results"
    result = publish_to(result_dir, LOCAL, ctx(), local=LocalResultServer(storage_dir=storage, port=7001))
    assert url_of(result) == "http://127.0.0.1:7001/e-42.tar.gz"
    assert storage.stat().st_mode & 0o777 == 0o700


def test_public_address_goes_into_url(result_dir: Path, storage: Path) -> None:
    block = LocalResultServer(storage_dir=storage, public_address="node7.example.org", port=6001)
    assert (
        url_of(publish_to(result_dir, LOCAL, ctx(), local=block))
        == "http://node7.example.org:6001/e-42.tar.gz"
    )


@pytest.mark.parametrize(
    "execution_id", ["../evil", "a/b", "a\\b", ".hidden", "a..b", "x\x00y", "", "sp ace", "é", "x" * 201]
)
def test_unsafe_execution_ids_refused(result_dir: Path, storage: Path, execution_id: str) -> None:
    with pytest.raises(LocalPublishError, match="execution id"):
        local_publisher.publish(result_dir, LOCAL, ctx(execution_id), LocalResultServer(storage_dir=storage))
    assert not storage.exists() or list(storage.iterdir()) == []


def test_wrong_spec_type_refused(result_dir: Path, storage: Path) -> None:
    with pytest.raises(LocalPublishError, match="expected local"):
        local_publisher.publish(
            result_dir,
            PublisherSpec.model_validate({"Type": "ipfs"}),
            ctx(),
            LocalResultServer(storage_dir=storage),
        )


def test_unarchivable_result_leaves_nothing(result_dir: Path, storage: Path) -> None:
    os.mkfifo(result_dir / "outputs" / "pipe")
    with pytest.raises(LocalPublishError, match="FIFO"):
        publish_to(result_dir, LOCAL, ctx(), local=LocalResultServer(storage_dir=storage))
    assert list(storage.iterdir()) == []


def test_republish_replaces_archive_and_digest(result_dir: Path, storage: Path) -> None:
    block = LocalResultServer(storage_dir=storage)
    publish_to(result_dir, LOCAL, ctx(), local=block)
    first = (storage / "e-42.tar.gz").read_bytes()
    (result_dir / "stdout").write_text("changed\n")
    publish_to(result_dir, LOCAL, ctx(), local=block)
    second = (storage / "e-42.tar.gz").read_bytes()
    assert first != second
    assert (storage / "e-42.tar.gz.sha256").read_text().split()[0] == hashlib.sha256(second).hexdigest()
    assert sorted(p.name for p in storage.iterdir()) == ["e-42.tar.gz", "e-42.tar.gz.sha256"]


def test_concurrent_publishes(tmp_path: Path, storage: Path) -> None:
    folders = []
    for index in range(8):
        folder = tmp_path / f"r{index}"
        (folder / "outputs").mkdir(parents=True)
        (folder / "stdout").write_text(f"job {index}\n")
        (folder / "outputs" / "data.bin").write_bytes(os.urandom(50_000 + index))
        folders.append(folder)
    with local_server(storage) as block:
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda i: publish_to(folders[i], LOCAL, ctx(f"e-{i}"), local=block), range(8))
            )
        for index, result in enumerate(results):
            dest = tmp_path / f"out{index}"
            fetch_source(result.to_input_source("/in").source, dest)
            assert tree(dest) == tree(folders[index])
    assert len(list(storage.iterdir())) == 16  # 8 archives + 8 sidecars, no temp files


def test_prune_during_publish_spares_the_temp_file(
    result_dir: Path, storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def write_then_prune(src: Path, out: BinaryIO) -> ArchiveInfo:
        info = write_archive(src, out)
        temps = sorted(p.name for p in storage.iterdir())
        seen["deleted"] = prune(storage, max_age=timedelta(0), max_total_bytes=0)
        seen["before"], seen["after"] = temps, sorted(p.name for p in storage.iterdir())
        return info

    monkeypatch.setattr(local_publisher, "write_archive", write_then_prune)
    publish_to(result_dir, LOCAL, ctx(), local=LocalResultServer(storage_dir=storage))
    assert len(seen["before"]) == 1 and seen["before"][0].startswith(".e-42.tar.gz.")
    assert seen["after"] == seen["before"] and seen["deleted"] == []
    assert sorted(p.name for p in storage.iterdir()) == ["e-42.tar.gz", "e-42.tar.gz.sha256"]


@pytest.fixture()
def big_result(tmp_path: Path) -> Path:
    """A result folder whose archive is over 2 MiB (random bytes do not compress)."""
    big = tmp_path / "big"
    (big / "outputs").mkdir(parents=True)
    (big / "outputs" / "random.bin").write_bytes(os.urandom(2 * MiB))
    return big


@pytest.fixture(params=["tmpfs", "rlimit"])
def small_disk(
    request: pytest.FixtureRequest, tmp_path: Path, big_result: Path
) -> Iterator[tuple[Path, str]]:
    """A storage folder that cannot take 1 MiB: a 1 MiB tmpfs when mounting works, else RLIMIT_FSIZE
    (set after `big_result` exists, since the limit applies to every file this process writes)."""
    path = tmp_path / "small"
    path.mkdir()
    if request.param == "tmpfs":
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True
        )
        if mounted.returncode == 0:
            try:
                yield path, "tmpfs"
            finally:
                subprocess.run(["umount", str(path)], check=True)
            return
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, limits[1]))
    try:
        yield path, "rlimit"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)


def test_disk_full_leaves_no_partial_archive(
    small_disk: tuple[Path, str], big_result: Path, result_dir: Path
) -> None:
    storage, mode = small_disk
    block = LocalResultServer(storage_dir=storage)
    with pytest.raises(LocalPublishError) as failure:
        publish_to(big_result, LOCAL, ctx("e-big"), local=block)
    assert ("no space left" if mode == "tmpfs" else "file size limit") in str(failure.value)
    assert list(storage.iterdir()) == []  # no archive, no sidecar, no temp file
    publish_to(result_dir, LOCAL, ctx("e-small"), local=block)  # the space was given back
    assert sorted(p.name for p in storage.iterdir()) == ["e-small.tar.gz", "e-small.tar.gz.sha256"]


# ------------------------------------------------------------------------------------ re-addressing


def test_restart_on_another_port_and_readdress(result_dir: Path, storage: Path, tmp_path: Path) -> None:
    with local_server(storage) as block:
        result = publish_to(result_dir, LOCAL, ctx(), local=block)
    old_base = block.base_url()
    with pytest.raises(FetchError, match="may be down or have moved"):
        fetch_source(result.to_input_source("/in").source, tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    with local_server(storage) as moved:
        assert moved.port != block.port
        again = readdress(result, old_base, moved.base_url())
        assert url_of(again) == f"{moved.base_url()}/e-42.tar.gz"
        dest = tmp_path / "fetched"
        fetch_source(again.to_input_source("/in").source, dest)
    assert tree(dest) == tree(result_dir)


# --------------------------------------------------------------------------------- URL source, real server


def test_corrupted_stored_archive_is_detected(result_dir: Path, storage: Path, tmp_path: Path) -> None:
    with local_server(storage) as block:
        result = publish_to(result_dir, LOCAL, ctx(), local=block)
        archive = storage / "e-42.tar.gz"
        data = bytearray(archive.read_bytes())
        data[len(data) // 2] ^= 0xFF
        archive.write_bytes(bytes(data))  # bit rot after publishing; the sidecar keeps the true digest
        dest = tmp_path / "dest"
        dest.mkdir()
        with pytest.raises(ChecksumMismatchError, match="checksum mismatch"):
            fetch_source(result.to_input_source("/in").source, dest)
    assert list(dest.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".url-input-")] == []


def test_missing_result_names_retention(storage: Path, tmp_path: Path) -> None:
    with local_server(storage) as block, pytest.raises(FetchError, match="retention"):
        fetch_source(url_source(f"{block.base_url()}/e-gone.tar.gz"), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_extract_false_keeps_the_archive_file(result_dir: Path, storage: Path, tmp_path: Path) -> None:
    with local_server(storage) as block:
        url = url_of(publish_to(result_dir, LOCAL, ctx(), local=block))
        dest = tmp_path / "raw"
        fetch_source(url_source(url, extract=False), dest)
    assert tree(dest) == {"e-42.tar.gz": (storage / "e-42.tar.gz").read_bytes()}


# ------------------------------------------------------------------------------ URL source, scripted server

Respond = Callable[[BaseHTTPRequestHandler, int], None]


@contextlib.contextmanager
def scripted(respond: Respond) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server on 127.0.0.1 whose GETs are answered by `respond(handler, request_number)`."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            respond(self, len(seen))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def send(
    handler: BaseHTTPRequestHandler, status: int, headers: dict[str, Any], body: bytes, cut: bool = False
) -> None:
    """Answer; with `cut`, close the connection after `body` although Content-Length promised more."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, str(value))
    handler.end_headers()
    handler.wfile.write(body)
    if cut:
        handler.close_connection = True


@pytest.fixture()
def archive(result_dir: Path) -> bytes:
    out = io.BytesIO()
    write_archive(result_dir, out)
    return out.getvalue()


def digest_headers(data: bytes) -> dict[str, str]:
    sha = hashlib.sha256(data)
    return {
        "ETag": f'"{sha.hexdigest()}"',
        "Repr-Digest": f"sha-256=:{base64.b64encode(sha.digest()).decode()}:",
    }


def ranged(data: bytes, cut_at: Callable[[int], int | None], *, tamper: bool = False) -> Respond:
    """Serve `data` with Range support; request n is cut after `cut_at(n)` bytes (None: complete)."""

    def respond(handler: BaseHTTPRequestHandler, n: int) -> None:
        header = handler.headers.get("Range")
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        body = data[start:]
        if tamper and start:
            body = bytes(b ^ 1 for b in body)
        headers = {"Accept-Ranges": "bytes", "Content-Length": len(body), **digest_headers(data)}
        if header:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        limit = cut_at(n)
        send(handler, 206 if header else 200, headers, body[:limit], cut=limit is not None)

    return respond


def test_resume_after_broken_download(archive: bytes, result_dir: Path, tmp_path: Path) -> None:
    half = len(archive) // 2
    with scripted(ranged(archive, lambda n: half if n == 1 else None)) as (base, seen):
        dest = fetch_source(url_source(f"{base}/e-1.tar.gz"), tmp_path / "dest")
    assert tree(dest) == tree(result_dir)
    assert [r.get("range") for r in seen] == [None, f"bytes={half}-"]
    assert seen[1]["if-range"] == f'"{hashlib.sha256(archive).hexdigest()}"'


def test_resume_is_bounded(archive: bytes, tmp_path: Path) -> None:
    with (
        scripted(ranged(archive, lambda n: 100)) as (base, seen),
        pytest.raises(FetchError, match="broke off"),
    ):
        fetch_source(url_source(f"{base}/e-1.tar.gz"), tmp_path / "dest")
    assert len(seen) == RESUMES + 1
    assert not (tmp_path / "dest").exists()


def test_resumed_bytes_are_verified(archive: bytes, tmp_path: Path) -> None:
    half = len(archive) // 2
    respond = ranged(archive, lambda n: half if n == 1 else None, tamper=True)
    with scripted(respond) as (base, seen), pytest.raises(ChecksumMismatchError):
        fetch_source(url_source(f"{base}/e-1.tar.gz"), tmp_path / "dest")
    assert len(seen) == 2 and not (tmp_path / "dest").exists()


def test_server_ignoring_range_restarts_download(archive: bytes, result_dir: Path, tmp_path: Path) -> None:
    def respond(handler: BaseHTTPRequestHandler, n: int) -> None:
        headers = {"Accept-Ranges": "bytes", "Content-Length": len(archive), **digest_headers(archive)}
        send(handler, 200, headers, archive[:50] if n == 1 else archive, cut=n == 1)

    with scripted(respond) as (base, seen):
        dest = fetch_source(url_source(f"{base}/e-1.tar.gz"), tmp_path / "dest")
    assert tree(dest) == tree(result_dir)
    assert seen[1]["range"] == "bytes=50-"


def test_truncated_without_ranges_fails(archive: bytes, tmp_path: Path) -> None:
    def respond(handler: BaseHTTPRequestHandler, n: int) -> None:
        send(handler, 200, {"Content-Length": len(archive)}, archive[:100], cut=True)

    with scripted(respond) as (base, seen), pytest.raises(FetchError, match="after 100 bytes"):
        fetch_source(url_source(f"{base}/e-1.tar.gz"), tmp_path / "dest")
    assert len(seen) == 1 and not (tmp_path / "dest").exists()


def test_legacy_digest_header_is_checked(tmp_path: Path) -> None:
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()

    def respond(handler: BaseHTTPRequestHandler, n: int) -> None:
        send(handler, 200, {"Content-Length": 5, "Digest": f"SHA-256={wrong}"}, b"hello")

    with scripted(respond) as (base, _), pytest.raises(ChecksumMismatchError):
        fetch_source(url_source(f"{base}/data.txt"), tmp_path / "dest")


def test_plain_file_and_redirect_and_bad_archive(tmp_path: Path) -> None:
    def respond(handler: BaseHTTPRequestHandler, n: int) -> None:
        if handler.path == "/moved.csv":
            send(handler, 302, {"Location": "/files/a%20b.csv", "Content-Length": 0}, b"")
        else:
            send(handler, 200, {"Content-Length": 8, **digest_headers(b"a,b\n1,2\n")}, b"a,b\n1,2\n")

    with scripted(respond) as (base, seen):
        dest = fetch_source(url_source(f"{base}/files/a%20b.csv"), tmp_path / "plain")
        assert tree(dest) == {"a_b.csv": b"a,b\n1,2\n"}
        with pytest.raises(FetchError, match="redirects are not followed"):
            fetch_source(url_source(f"{base}/moved.csv"), tmp_path / "moved")
        with pytest.raises(UnsafeArchiveError, match="not a gzip archive"):
            fetch_source(url_source(f"{base}/files/a.csv", extract=True), tmp_path / "bad")
    # the redirect target was never requested
    assert [r["path"] for r in seen] == ["/files/a%20b.csv", "/moved.csv", "/files/a.csv"]
    assert not (tmp_path / "moved").exists() and not (tmp_path / "bad").exists()


def test_non_empty_dest_refused_before_download(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with (
        scripted(lambda h, n: send(h, 200, {"Content-Length": 1}, b"x")) as (base, seen),
        pytest.raises(FetchError, match="not an empty folder"),
    ):
        fetch_source(url_source(f"{base}/x.bin"), dest)
    assert seen == [] and tree(dest) == {"keep": b"mine"}


def test_connection_refused_names_url(tmp_path: Path) -> None:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/e-1.tar.gz"
    with pytest.raises(FetchError, match="readdress") as failure:
        fetch_source(url_source(url), tmp_path / "dest")
    assert url in str(failure.value)


def test_file_name_sanitised() -> None:
    assert file_name("http://h/dir/a%20b.csv") == "a_b.csv"
    assert file_name("http://h/") == "download"
    assert file_name("http://h/..%2f..%2fetc%2fpasswd") == "_.._etc_passwd"
    assert file_name("http://h/x/.bashrc?q=1") == "bashrc"


def test_expected_sha256_parsing() -> None:
    sha = hashlib.sha256(b"x").digest()
    b64 = base64.b64encode(sha).decode()
    assert expected_sha256(urllib3.HTTPHeaderDict({"Repr-Digest": f"sha-512=:AAAA:, sha-256=:{b64}:"})) == sha
    assert expected_sha256(urllib3.HTTPHeaderDict({"Digest": f"MD5=abc, SHA-256={b64}"})) == sha
    assert expected_sha256(urllib3.HTTPHeaderDict({"Content-Length": "1"})) is None
    with pytest.raises(FetchError, match="malformed"):
        expected_sha256(urllib3.HTTPHeaderDict({"Repr-Digest": "sha-256=:bm90IDMyIGJ5dGVz:"}))


def test_full_disk_while_fetching_leaves_dest_untouched(small_disk: tuple[Path, str]) -> None:
    root, _ = small_disk
    payload = os.urandom(2 * MiB)

    def respond(handler: BaseHTTPRequestHandler, n: int) -> None:
        send(handler, 200, {"Content-Length": len(payload), **digest_headers(payload)}, payload)

    with scripted(respond) as (base, _), pytest.raises(FetchError, match="cannot store"):
        fetch_source(url_source(f"{base}/big.bin"), root / "dest")
    assert list(root.iterdir()) == []  # no dest, no staging folder
