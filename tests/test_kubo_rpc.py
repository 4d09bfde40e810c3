"""The Kubo RPC client against the real daemon, and against tiny scripted servers for what Kubo rarely does."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BufferedIOBase
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.errors import FetchError, IPFSPublishError
from prefect_bacalhau_publish.kubo.car import CarStore
from prefect_bacalhau_publish.kubo.cid import CID
from prefect_bacalhau_publish.kubo.rpc import KuboClient, add_flags
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, import_path, scan
from prefect_bacalhau_publish.testing import KuboServer, binary, free_port

V0 = PROFILES["unixfs-v0-2015"]
V1 = PROFILES["unixfs-v1-2025"]
ODD_NAMES = ["a+b", "50% off", "ü ñ 中文", "x&y=z", "#hash", 'quote"d', "semi;colon", ".hidden", "sp ace "]


def ipfs(kubo: KuboServer, *args: str) -> str:
    env = {**os.environ, "IPFS_PATH": str(kubo.repo_dir)}
    done = subprocess.run([str(binary("ipfs")), *args], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    for index, name in enumerate(ODD_NAMES):
        (root / "nested" / name).write_bytes(name.encode() * (index + 1))
    (root / "nested" / "deeper" / "big.bin").write_bytes(os.urandom(300_000))
    os.symlink("nested/a+b", root / "link")
    return root


# ------------------------------------------------------------------------------------- real Kubo


def test_version_through_a_multiaddr(kubo: KuboServer) -> None:
    with KuboClient.from_node(IPFSNode(api_address=kubo.api_multiaddr)) as client:
        assert client.version() >= (0, 20, 0)
        assert client.config_get("Import.UnixFSHAMTDirectorySizeEstimation") is None
        with pytest.raises(IPFSPublishError, match=r"Import\.NoSuchKey"):
            client.config_get("Import.NoSuchKey")


@pytest.mark.parametrize("profile", ["unixfs-v0-2015", "unixfs-v1-2025"])
def test_add_folder_matches_ipfs_add(kubo: KuboServer, tree: Path, profile: str) -> None:
    params = PROFILES[profile]
    with KuboClient(kubo.api_url) as client:
        cid = client.add_folder(tree, add_flags(params, pin=False))
    baseline = ipfs(
        kubo, "add", "-r", "-H", "-Q", "--pin=false", f"--cid-version={params.cid_version}",
        f"--raw-leaves={str(params.raw_leaves).lower()}", f"--chunker={params.chunker}",
        f"--max-file-links={params.max_file_links}", str(tree),
    )  # fmt: skip
    assert cid == baseline == import_path(tree, params)
    listed = ipfs(kubo, "ls", f"{cid}/nested")
    assert all(name in listed for name in ODD_NAMES)


def test_pin_cat_and_dag_export(kubo: KuboServer, tree: Path, tmp_path: Path) -> None:
    with KuboClient(kubo.api_url) as client:
        cid = client.add_folder(tree, add_flags(V1, pin=False))
        assert cid not in ipfs(kubo, "pin", "ls", "--type=recursive")
        assert client.pin_type(cid) is None
        client.pin_add(cid)
        assert cid in ipfs(kubo, "pin", "ls", "--type=recursive")
        assert client.pin_type(cid) == "recursive"
        with client.cat(f"{cid}/nested/a+b") as chunks:
            assert b"".join(chunks) == b"a+b"
        with client.dag_export(cid) as chunks, open(tmp_path / "dag.car", "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
    with CarStore.load(tmp_path / "dag.car") as store:
        assert store.roots == [CID.parse(cid)]
        assert len(store) > 10


def test_kubo_errors_are_surfaced(kubo: KuboServer, tree: Path) -> None:
    with KuboClient(kubo.api_url) as client:
        with pytest.raises(IPFSPublishError, match="unrecognized chunker option"):  # refused up front (500)
            client.add_folder(tree, {**add_flags(V1, pin=False), "chunker": "bogus"})
        with pytest.raises(IPFSPublishError, match="does not exist"):  # refused after streaming (trailer)
            client.add_folder(tree, {**add_flags(V1, pin=False), "to-files": "/no/such/dir/x"})


def test_unreadable_file_aborts_the_add(kubo: KuboServer, tree: Path) -> None:
    scanned = scan(tree)
    (tree / "nested" / "a+b").unlink()
    with KuboClient(kubo.api_url) as client, pytest.raises(IPFSPublishError, match=r"cannot read .*a\+b"):
        client.add_folder(tree, add_flags(V1, pin=False), tree=scanned)


@pytest.mark.parametrize("error", [IPFSPublishError, FetchError])
def test_node_down_is_a_clear_error(error: type[Exception]) -> None:
    port = free_port()  # nothing listens there any more
    with (
        KuboClient(f"http://127.0.0.1:{port}", error=error) as client,  # type: ignore[arg-type]
        pytest.raises(error, match=rf"127\.0\.0\.1:{port}.*is the Kubo daemon running\?"),
    ):
        client.version()


def test_bad_address_is_a_clear_error() -> None:
    with pytest.raises(IPFSPublishError, match="api_address"):
        KuboClient.from_node(IPFSNode(api_address="/unix/tmp/sock"))


# ---------------------------------------------------------------------------------- scripted servers


Script = Callable[[BufferedIOBase, BufferedIOBase, dict[str, str]], None]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        headers: dict[str, str] = {}
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        script: Script = self.server.script  # type: ignore[attr-defined]
        script(self.rfile, self.wfile, headers)


@contextmanager
def scripted_server(script: Script) -> Iterator[str]:
    """A loopback HTTP server whose every request is answered by `script(rfile, wfile, headers)`."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.script = script  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def read_body(rfile: BufferedIOBase, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding") != "chunked":
        return rfile.read(int(headers.get("content-length", "0")))
    body = bytearray()
    while size := int(rfile.readline().split(b";")[0], 16):
        body += rfile.read(size)
        rfile.readline()
    while rfile.readline() not in (b"\r\n", b""):
        pass
    return bytes(body)


def answer(wfile: BufferedIOBase, lines: list[Any], trailer: str | None = None) -> None:
    """A chunked NDJSON answer, like Kubo's, optionally ending with an X-Stream-Error trailer."""
    wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n")
    wfile.write(b"Trailer: X-Stream-Error\r\nConnection: close\r\n\r\n")
    for line in lines:
        data = json.dumps(line).encode() + b"\n"
        wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    wfile.write(b"0\r\n" + (f"X-Stream-Error: {trailer}\r\n".encode() if trailer else b"") + b"\r\n")


def test_too_old_kubo_is_refused() -> None:
    def script(rfile: BufferedIOBase, wfile: BufferedIOBase, headers: dict[str, str]) -> None:
        read_body(rfile, headers)
        answer(wfile, [{"Version": "0.19.1", "Commit": ""}])

    with (
        scripted_server(script) as url,
        KuboClient(url) as client,
        pytest.raises(IPFSPublishError, match=r"0\.19\.1 .* too old: version 0\.20\.0 or newer"),
    ):
        client.version()


@pytest.mark.parametrize("how", ["error object", "trailer"])
def test_mid_stream_errors_are_raised(tree: Path, how: str) -> None:
    def script(rfile: BufferedIOBase, wfile: BufferedIOBase, headers: dict[str, str]) -> None:
        read_body(rfile, headers)
        lines: list[Any] = [
            {"Name": "tree/nested/a+b", "Hash": "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"}
        ]
        if how == "error object":
            answer(wfile, [*lines, {"Message": "disk full", "Code": 0, "Type": "error"}])
        else:
            answer(wfile, lines, trailer="disk full")

    with (
        scripted_server(script) as url,
        KuboClient(url) as client,
        pytest.raises(IPFSPublishError, match="failed during /add: disk full"),
    ):
        client.add_folder(tree, add_flags(V1, pin=False))


def test_auth_header_is_sent_and_refusals_name_no_secret(tree: Path) -> None:
    from pydantic import SecretStr

    seen: list[str | None] = []

    def script(rfile: BufferedIOBase, wfile: BufferedIOBase, headers: dict[str, str]) -> None:
        read_body(rfile, headers)
        seen.append(headers.get("authorization"))
        wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 13\r\nConnection: close\r\n\r\nAccess Denied")

    with (
        scripted_server(script) as url,
        KuboClient(url, auth=SecretStr("Bearer hunter2")) as client,
        pytest.raises(IPFSPublishError, match=r"refused /version .*IPFSNode\.auth") as caught,
    ):
        client.version()
    assert seen == ["Bearer hunter2"]
    assert "hunter2" not in str(caught.value)


def test_answer_is_read_while_the_body_is_still_sent(tmp_path: Path) -> None:
    """Kubo answers each file while reading the upload; a half-duplex client would deadlock here."""
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    chatter = [{"Name": f"up/progress-{i}", "Bytes": i, "Pad": "x" * 200} for i in range(60_000)]  # ~15 MB

    def script(rfile: BufferedIOBase, wfile: BufferedIOBase, headers: dict[str, str]) -> None:
        wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        wfile.write(b"".join(json.dumps(line).encode() + b"\n" for line in chatter))  # before reading
        body = read_body(rfile, headers)
        wfile.write(json.dumps({"Name": "up", "Hash": f"received-{len(body)}"}).encode() + b"\n")

    with scripted_server(script) as url, KuboClient(url, timeout=20) as client:
        cid = client.add_folder(tmp_path / "up", add_flags(V1, pin=False))
    assert cid.startswith("received-") and int(cid.split("-")[1]) > 24 * 1024 * 1024
