"""IPFS fetches through the node's own gateway: a depth-first CAR with repeats, checked and written as it
streams; altered streams are refused with nothing placed; a gateway that cannot serve it means the RPC API."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.errors import FetchError
from prefect_bacalhau_publish.kubo.car import encode_frame, encode_header, read_header, read_section
from prefect_bacalhau_publish.kubo.gateway import gateway_url
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, import_path
from prefect_bacalhau_publish.publishers.ipfs import publish_folder
from prefect_bacalhau_publish.sources.ipfs import fetch_cid
from prefect_bacalhau_publish.testing import KuboServer, free_port

from .test_ipfs_publish import ALTERED_CARS


@dataclass
class Calls:
    """What the proxy was asked: RPC paths and gateway GETs."""

    rpc: list[str] = field(default_factory=list)
    gateway: int = 0


def _keep(car: bytes) -> bytes:
    return car


@contextmanager
def gateway_proxy(
    kubo: KuboServer,
    change: Callable[[bytes], bytes] = _keep,
    *,
    swap_cid: str | None = None,
    gateway_status: int | None = None,
    content_type: str | None = None,
    gateway_address: str | None = None,
) -> Iterator[tuple[IPFSNode, Calls]]:
    """A node whose RPC API forwards to the real Kubo and names this proxy as its gateway, which forwards to
    Kubo's gateway and alters the CAR with `change` (or answers `gateway_status`, or `content_type`)."""
    calls = Calls()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            calls.rpc.append(url.path.removeprefix("/api/v0"))
            if url.path.endswith("/config"):
                address = gateway_address or f"/ip4/127.0.0.1/tcp/{self.server.server_address[1]}"
                body = b'{"Key": "Addresses.Gateway", "Value": "%s"}' % address.encode()
                self.answer(200, body, "application/json")
                return
            upstream = httpx.post(kubo.api_url + url.path, params=parse_qsl(url.query), trust_env=False)
            self.answer(upstream.status_code, upstream.content, upstream.headers.get("content-type", ""))

        def do_GET(self) -> None:
            calls.gateway += 1
            url = urlsplit(self.path)
            if gateway_status is not None:
                self.answer(gateway_status, b"no", "text/plain")
                return
            path = f"/ipfs/{swap_cid}" if swap_cid else url.path
            upstream = httpx.get(
                kubo.gateway_url + path,
                params=parse_qsl(url.query),
                headers={"Accept": self.headers.get("Accept", "")},
                trust_env=False,
            )
            body = change(upstream.content) if upstream.status_code == 200 else upstream.content
            self.answer(upstream.status_code, body, content_type or upstream.headers.get("content-type", ""))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield IPFSNode(api_address=f"http://127.0.0.1:{server.server_address[1]}"), calls
    finally:
        server.shutdown()
        server.server_close()


def _root_last(car: bytes) -> bytes:
    """The same blocks, the root (sent first) moved to the end: no longer depth-first."""
    import io

    handle = io.BytesIO(car)
    roots = read_header(handle)
    sections = []
    while (section := read_section(handle)) is not None:
        cid, start, body = section
        sections.append(encode_frame(bytes(cid), body[start:]))
    return encode_header([bytes(root) for root in roots]) + b"".join(sections[1:] + sections[:1])


def tree(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 (or '->target' for a link, '/' for a folder) of everything under `root`."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "->" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "/"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A small result: nested folders, a link, two identical files, a file of repeated 1 MiB leaves."""
    root = tmp_path / "results"
    (root / "outputs" / "a" / "b").mkdir(parents=True)
    (root / "outputs" / "a" / "b" / "deep.txt").write_text("deep\n")
    (root / "outputs" / "same-1.bin").write_bytes(b"x" * 5000)
    (root / "outputs" / "same-2.bin").write_bytes(b"x" * 5000)
    (root / "outputs" / "zeros.bin").write_bytes(bytes(3 * 2**20 + 7))
    (root / "outputs" / "random.bin").write_bytes(os.urandom(2 * 2**20 + 5))
    (root / "outputs" / "link").symlink_to("a/b/deep.txt")
    (root / "stdout").write_text("hello\n")
    return root


def test_fetch_streams_from_the_gateway(kubo: KuboServer, results: Path, tmp_path: Path) -> None:
    cid = publish_folder(results, IPFSNode(api_address=kubo.api_url))
    with gateway_proxy(kubo) as (node, calls):
        fetch_cid(cid, tmp_path / "got", node)
    assert tree(tmp_path / "got") == tree(results)
    assert calls.gateway == 1
    assert "/dag/export" not in calls.rpc


def test_sharded_folder_and_deep_file_stream_in_the_gateways_order(kubo: KuboServer, tmp_path: Path) -> None:
    """A HAMT-sharded folder (6 000 entries, repeats among them) and a two-level file (v0: 174 links per
    node) come from the real gateway in exactly the order the walk asks for them."""
    root = tmp_path / "big"
    (root / "many").mkdir(parents=True)
    for index in range(6000):
        (root / "many" / f"entry-{index:05d}.txt").write_text(f"{index % 1000}\n")
    (root / "deep.bin").write_bytes(os.urandom(175 * 256 * 1024 + 1))
    node = IPFSNode(api_address=kubo.api_url, cid_profile="unixfs-v0-2015")
    cid = publish_folder(root, node)
    with gateway_proxy(kubo) as (proxied, calls):
        fetch_cid(cid, tmp_path / "got", proxied.model_copy(update={"cid_profile": "unixfs-v0-2015"}))
    assert calls.gateway == 1 and "/dag/export" not in calls.rpc
    assert tree(tmp_path / "got") == tree(root)


@pytest.mark.parametrize(
    ("change", "swap", "error", "message"),
    [
        *ALTERED_CARS,
        pytest.param(_root_last, False, FetchError, "does not follow the DAG depth-first", id="out-of-order"),
    ],
)
def test_altered_gateway_car_is_refused(
    kubo: KuboServer,
    results: Path,
    tmp_path: Path,
    change: Callable[[bytes], bytes],
    swap: bool,
    error: type[Exception],
    message: str,
) -> None:
    cid = publish_folder(results, IPFSNode(api_address=kubo.api_url))
    other = import_path(results / "outputs", PROFILES["unixfs-v1-2025"])  # published with it, a sub-DAG
    (tmp_path / "out").mkdir()
    with (
        gateway_proxy(kubo, change, swap_cid=other if swap else None) as (node, calls),
        pytest.raises(error, match=message),
    ):
        fetch_cid(cid, tmp_path / "out" / "dest", node)
    assert os.listdir(tmp_path / "out") == []
    assert calls.gateway == 1 and "/dag/export" not in calls.rpc  # refused, not retried elsewhere


@pytest.mark.parametrize(
    "unusable",
    [
        {"gateway_status": 500},
        {"content_type": "application/vnd.ipld.car; version=1; order=unk; dups=n"},
        {"gateway_address": "/ip4/127.0.0.1/tcp/{closed}"},
        {"gateway_address": "/unix/tmp/gateway.sock"},
    ],
    ids=["error-status", "no-repeats", "closed-port", "not-tcp"],
)
def test_a_gateway_that_cannot_serve_the_car_means_the_rpc_api(
    kubo: KuboServer, results: Path, tmp_path: Path, unusable: dict[str, object]
) -> None:
    cid = publish_folder(results, IPFSNode(api_address=kubo.api_url))
    if "gateway_address" in unusable:
        unusable["gateway_address"] = str(unusable["gateway_address"]).format(closed=free_port())
    with gateway_proxy(kubo, **unusable) as (node, calls):  # type: ignore[arg-type]
        fetch_cid(cid, tmp_path / "got", node)
    assert tree(tmp_path / "got") == tree(results)
    assert "/dag/export" in calls.rpc


@pytest.mark.parametrize(
    ("address", "api", "expected"),
    [
        ("/ip4/127.0.0.1/tcp/8080", "http://127.0.0.1:5001", "http://127.0.0.1:8080"),
        ("/ip4/0.0.0.0/tcp/8080", "http://127.0.0.1:5001", "http://127.0.0.1:8080"),
        ("/ip6/::/tcp/8080", "http://[::1]:5001", "http://[::1]:8080"),
        ("/ip4/127.0.0.1/tcp/8080", "http://node.example:5001", None),  # the node's loopback, not ours
        ("/ip4/0.0.0.0/tcp/8080", "https://node.example:5001", "http://node.example:8080"),
        ("/unix/run/gw.sock", "http://127.0.0.1:5001", None),
    ],
)
def test_gateway_url_is_reached_where_the_node_is(address: str, api: str, expected: str | None) -> None:
    assert gateway_url(address, api) == expected
