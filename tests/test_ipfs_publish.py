"""The IPFS publisher and input source against the real Kubo daemon: CIDs, pins, round trips, refusals."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.errors import (
    ChecksumMismatchError,
    FetchError,
    IPFSPublishError,
    UnsafeArchiveError,
)
from prefect_bacalhau_publish.kubo.car import encode_frame, encode_header
from prefect_bacalhau_publish.kubo.cid import DAG_PB, read_varint, sha256_cid
from prefect_bacalhau_publish.kubo.dagpb import (
    DIRECTORY,
    HAMT_SHARD,
    SYMLINK,
    PBLink,
    UnixFSData,
    decode_unixfs,
    encode_node,
    encode_unixfs,
)
from prefect_bacalhau_publish.kubo.rpc import KuboClient
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, ImportParams, import_path
from prefect_bacalhau_publish.publishers import get_publisher
from prefect_bacalhau_publish.publishers.ipfs import node_import_params
from prefect_bacalhau_publish.sources import get_source
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec, SourceSpec
from prefect_bacalhau_publish.testing import KuboServer, binary, free_port

SPEC = PublisherSpec.model_validate({"Type": "ipfs"})
CONTEXT = ExecutionContext(job_id="j-1", execution_id="e-1", node_id="n-1", published_at=datetime.now(UTC))
TOKEN, LIMITED = "Bearer pbp-full-token", "Bearer pbp-limited-token"


def ipfs(repo: Path, *args: str) -> str:
    env = {**os.environ, "IPFS_PATH": str(repo)}
    done = subprocess.run([str(binary("ipfs")), *args], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def cli_add(repo: Path, target: Path, params: ImportParams) -> str:
    """The baseline: `ipfs add -r` (hidden files included) with the same flags, not pinned."""
    return ipfs(
        repo, "add", "-r", "-H", "-Q", "--pin=false", f"--cid-version={params.cid_version}",
        f"--raw-leaves={str(params.raw_leaves).lower()}", f"--chunker={params.chunker}",
        f"--max-file-links={params.max_file_links}", str(target),
    )  # fmt: skip


def recursive_pins(repo: Path) -> set[str]:
    return set(ipfs(repo, "pin", "ls", "--type=recursive", "-q").split())


def pinned(repo: Path, cid: str) -> bool:
    return cid in recursive_pins(repo)


def listing(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Everything under `root` (files with their bytes, symlinks with their targets, folders)."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", path.read_bytes())
    return out


def make_results(root: Path, case: str) -> Path:
    root.mkdir(parents=True)
    if case == "empty":
        return root
    (root / "outputs" / "ünï cødé" / "deep er").mkdir(parents=True)
    (root / "outputs" / "empty dir").mkdir()
    (root / "stdout").write_text("hello from the job\n")
    (root / "stderr").write_text("")
    (root / "exitCode").write_text("0")
    (root / "outputs" / ".hidden").write_text("dot files are published too\n")
    (root / "outputs" / "ünï cødé" / "naïve file+1 %.txt").write_text("é" * 1000)
    (root / "outputs" / "ünï cødé" / "deep er" / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024 + 12345))
    os.symlink("../stdout", root / "outputs" / "link to stdout")
    return root


@pytest.fixture()
def node(kubo: KuboServer) -> IPFSNode:
    return IPFSNode(api_address=kubo.api_multiaddr)


# ---------------------------------------------------------------------------------------- publish


@pytest.mark.parametrize("case", ["empty", "nested"])
@pytest.mark.parametrize("profile", ["unixfs-v1-2025", "unixfs-v0-2015"])
def test_publish_matches_ipfs_add_and_round_trips(
    kubo: KuboServer, node: IPFSNode, tmp_path: Path, case: str, profile: str
) -> None:
    results = make_results(tmp_path / "results", case)
    node = node.model_copy(update={"cid_profile": profile})
    published = get_publisher("ipfs")(results, SPEC, CONTEXT, node)
    cid = published.params.cid  # type: ignore[attr-defined]
    assert published.to_bacalhau() == {"Type": "ipfs", "Params": {"CID": cid}}
    assert (
        cid == cli_add(kubo.repo_dir, results, PROFILES[profile]) == import_path(results, PROFILES[profile])
    )
    assert cid.startswith("bafy" if profile == "unixfs-v1-2025" else "Qm")
    assert pinned(kubo.repo_dir, cid)

    dest = tmp_path / "fetched" / "inputs"
    source = SourceSpec.model_validate({"Type": "ipfs", "Params": {"CID": cid}})
    assert get_source("ipfs")(source, dest, node) == dest
    assert listing(dest) == listing(results)
    assert os.listdir(dest.parent) == ["inputs"]  # no temporary folder left behind


def test_unpinned_publish(kubo: KuboServer, node: IPFSNode, tmp_path: Path) -> None:
    results = make_results(tmp_path / "results", "nested")
    (results / "unique").write_bytes(os.urandom(64))
    published = get_publisher("ipfs")(results, SPEC, CONTEXT, node.model_copy(update={"pin": False}))
    assert not pinned(kubo.repo_dir, published.params.cid)  # type: ignore[attr-defined]


def test_ten_thousand_files_shard_like_kubo(kubo: KuboServer, node: IPFSNode, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for index in range(10_000):
        (results / f"result-{index:05d}.txt").write_text(f"line {index}\n" * (index % 5))
    published = get_publisher("ipfs")(results, SPEC, CONTEXT, node)
    cid = published.params.cid  # type: ignore[attr-defined]
    assert cid == cli_add(kubo.repo_dir, results, PROFILES["unixfs-v1-2025"])
    assert _is_hamt(kubo, cid)
    dest = tmp_path / "fetched"
    PublishedResult.model_validate(published.to_bacalhau())
    get_source("ipfs")(published.to_input_source("/inputs").source, dest, node)
    assert len(os.listdir(dest)) == 10_000
    assert (dest / "result-09999.txt").read_text() == "line 9999\n" * 4


def _is_hamt(kubo: KuboServer, cid: str) -> bool:
    data = json.loads(ipfs(kubo.repo_dir, "dag", "get", cid))["Data"]["/"]["bytes"]
    return decode_unixfs(base64.b64decode(data + "=" * (-len(data) % 4))).type == HAMT_SHARD


@pytest.mark.parametrize("pin", [True, False])
def test_directory_sharded_differently_by_the_node_goes_through_a_car(
    kubo: KuboServer, node: IPFSNode, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, pin: bool
) -> None:
    # 4500 × 20-byte names: a basic folder for this node ("links" estimate), a HAMT for the profile ("block")
    results = tmp_path / "results"
    results.mkdir()
    for index in range(4500):
        (results / f"n{index:019d}").write_bytes(b"")
    (results / f"n{pin:019d}").write_text(str(pin))  # not the same DAG for both runs
    published = get_publisher("ipfs")(results, SPEC, CONTEXT, node.model_copy(update={"pin": pin}))
    cid = published.params.cid  # type: ignore[attr-defined]
    profile_repo = tmp_path_factory.mktemp("v1-2025") / "repo"
    ipfs(profile_repo, "init", "--profile", "test,unixfs-v1-2025")
    assert cid == cli_add(profile_repo, results, PROFILES["unixfs-v1-2025"])
    assert cid != cli_add(kubo.repo_dir, results, PROFILES["unixfs-v1-2025"])
    assert pinned(kubo.repo_dir, cid) is pin
    stats = json.loads(ipfs(kubo.repo_dir, "dag", "stat", "--progress=false", "--enc=json", cid))
    assert stats["UniqueBlocks"] > 2


def test_missing_result_folder(node: IPFSNode, tmp_path: Path) -> None:
    with pytest.raises(IPFSPublishError, match="does not exist"):
        get_publisher("ipfs")(tmp_path / "nope", SPEC, CONTEXT, node)


def test_node_down(tmp_path: Path) -> None:
    down = IPFSNode(api_address=f"/ip4/127.0.0.1/tcp/{free_port()}")
    results = make_results(tmp_path / "results", "nested")
    with pytest.raises(IPFSPublishError, match=r"127\.0\.0\.1.*is the Kubo daemon running\?"):
        get_publisher("ipfs")(results, SPEC, CONTEXT, down)
    source = SourceSpec.model_validate(
        {"Type": "ipfs", "Params": {"CID": import_path(results, PROFILES["unixfs-v1-2025"])}}
    )
    with pytest.raises(FetchError, match="is the Kubo daemon running"):
        get_source("ipfs")(source, tmp_path / "dest", down)
    assert not (tmp_path / "dest").exists()


def delete_after_scan(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """The IPFS publisher scans its folder, then `victim` is deleted (a clean-up racing the publish)."""
    import prefect_bacalhau_publish.publishers.ipfs as ipfs_publisher

    scanned = ipfs_publisher.scan

    def scan_then_delete(path: Path) -> Any:
        tree = scanned(path)
        victim.unlink()
        return tree

    monkeypatch.setattr(ipfs_publisher, "scan", scan_then_delete)


def test_a_file_gone_mid_publish_is_named(
    node: IPFSNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file deleted after the folder was scanned (a job still writing, a clean-up racing the publish)."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (results / "b.bin").write_bytes(b"gone before it is read")
    delete_after_scan(monkeypatch, results / "b.bin")
    with pytest.raises(IPFSPublishError, match=r"cannot read .*b\.bin while adding it"):
        get_publisher("ipfs")(results, SPEC, CONTEXT, node)


def test_a_failure_while_hashing_reaches_the_caller(
    node: IPFSNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local CID is built from the bytes as they are sent: a failure there stops the upload (a 10 MiB
    file is 40 chunks; nothing after the third is hashed) and reaches the caller as it was raised."""
    from prefect_bacalhau_publish.kubo import unixfs

    results = tmp_path / "results"
    results.mkdir()
    (results / "big.bin").write_bytes(os.urandom(10 * 1024 * 1024))
    calls = 0
    write = unixfs.FileBuilder.write

    def failing(self: Any, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise MemoryError("hashing failed")
        write(self, data)

    monkeypatch.setattr(unixfs.FileBuilder, "write", failing)
    with pytest.raises(MemoryError, match="hashing failed"):
        get_publisher("ipfs")(results, SPEC, CONTEXT, node)
    assert calls == 3  # nothing after the failure was hashed


# ------------------------------------------------------------------------------------------ fetch


def test_file_cid_becomes_a_file(kubo: KuboServer, node: IPFSNode, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "blob").write_bytes(data)
    cid = ipfs(kubo.repo_dir, "add", "-Q", "--cid-version=1", str(tmp_path / "blob"))
    (tmp_path / "dest").mkdir()  # an empty folder may be replaced
    source = SourceSpec.model_validate({"Type": "ipfs", "Params": {"CID": cid}})
    get_source("ipfs")(source, tmp_path / "dest", node)
    assert (tmp_path / "dest").read_bytes() == data


def test_destination_must_be_new_or_empty(node: IPFSNode, tmp_path: Path) -> None:
    source = SourceSpec.model_validate(
        {"Type": "ipfs", "Params": {"CID": "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"}}
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    (tmp_path / "file").write_text("mine too")
    for dest in (tmp_path / "full", tmp_path / "file"):
        with pytest.raises(FetchError, match=r"is not empty|is not an empty folder"):
            get_source("ipfs")(source, dest, node)
    assert (tmp_path / "full" / "keep").read_text() == "mine"
    assert (tmp_path / "file").read_text() == "mine too"
    with pytest.raises(FetchError, match="not a valid CID"):
        get_source("ipfs")(
            SourceSpec.model_validate({"Type": "ipfs", "Params": {"CID": "nope"}}), tmp_path / "x", node
        )


def _drop_last_block(car: bytes) -> bytes:
    length, pos = read_varint(car)
    pos += length
    last = pos
    while pos < len(car):
        last = pos
        size, start = read_varint(car, pos)
        pos = start + size
    return car[:last]


@contextmanager
def export_proxy(
    kubo: KuboServer, change: Callable[[bytes], bytes], swap_cid: str | None = None
) -> Iterator[IPFSNode]:
    """A node that forwards to the real Kubo but alters what `dag/export` returns; it keeps its gateway to
    itself (config access refused, as API.Authorizations can), so the RPC API's CAR is what is fetched
    (tests/test_ipfs_gateway.py alters the gateway's)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            query = dict(parse_qsl(url.query))
            if url.path.endswith("/config"):
                body = b'{"Message": "config access is not granted", "Code": 0, "Type": "error"}'
                self.send_response(403)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            exporting = url.path.endswith("/dag/export")
            if exporting and swap_cid:
                query["arg"] = swap_cid
            upstream = httpx.post(kubo.api_url + url.path, params=query, trust_env=False, timeout=30)
            body = change(upstream.content) if exporting and upstream.status_code == 200 else upstream.content
            self.send_response(upstream.status_code)
            self.send_header("Content-Type", upstream.headers.get("content-type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield IPFSNode(api_address=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def _flip_last_bit(car: bytes) -> bytes:
    return car[:-1] + bytes([car[-1] ^ 1])


ALTERED_CARS = [
    pytest.param(_flip_last_bit, False, ChecksumMismatchError, "does not match its hash", id="flipped-bit"),
    pytest.param(_drop_last_block, False, FetchError, "incomplete: block .* is missing", id="missing-block"),
    pytest.param(lambda car: car[:-5], False, FetchError, "truncated", id="truncated"),
    pytest.param(lambda car: car, True, FetchError, "is rooted at .*, not at", id="wrong-root"),
]
"""(change to the CAR, serve another CID's CAR, error, message): the refusals every CAR source must give."""


@pytest.mark.parametrize(("change", "swap", "error", "message"), ALTERED_CARS)
def test_altered_car_is_refused(
    kubo: KuboServer,
    node: IPFSNode,
    tmp_path: Path,
    change: Callable[[bytes], bytes],
    swap: bool,
    error: type[Exception],
    message: str,
) -> None:
    results = make_results(tmp_path / "results", "nested")
    cid = get_publisher("ipfs")(results, SPEC, CONTEXT, node).params.cid  # type: ignore[attr-defined]
    other = import_path(results / "outputs", PROFILES["unixfs-v1-2025"])  # published with it, a sub-DAG
    source = SourceSpec.model_validate({"Type": "ipfs", "Params": {"CID": cid}})
    (tmp_path / "out").mkdir()
    with export_proxy(kubo, change, other if swap else None) as proxy, pytest.raises(error, match=message):
        get_source("ipfs")(source, tmp_path / "out" / "dest", proxy)
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("name", "target"),
    [
        (b"..", None),
        (b"../evil", None),
        (b"a/b", None),
        (b"", None),
        (b"link", b"../../outside"),
        (b"abs", b"/etc"),
    ],
    ids=["dotdot", "parent-path", "slash", "empty", "escaping-symlink", "absolute-symlink"],
)
def test_unsafe_dag_is_refused(node: IPFSNode, tmp_path: Path, name: bytes, target: bytes | None) -> None:
    blocks: list[tuple[bytes, bytes]] = []
    if target is None:
        child = b"hello unsafe world"
        child_cid = sha256_cid(child, 0x55, 1)
    else:
        child = encode_node([], encode_unixfs(UnixFSData(SYMLINK, target)))
        child_cid = sha256_cid(child, DAG_PB, 1)
    blocks.append((child_cid, child))
    folder = encode_node([PBLink(child_cid, name, len(child))], encode_unixfs(UnixFSData(DIRECTORY)))
    root = sha256_cid(folder, DAG_PB, 1)
    blocks.append((root, folder))
    car = [encode_header([root]), *(encode_frame(cid, block) for cid, block in blocks)]
    with KuboClient.from_node(node) as client:
        (root_cid,) = client.dag_import(car, pin=True)
    source = SourceSpec.model_validate({"Type": "ipfs", "Params": {"CID": root_cid}})
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        get_source("ipfs")(source, tmp_path / "dest", node)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------ auth node


@pytest.fixture(scope="module")
def auth_kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboServer]:
    """A Kubo whose RPC needs a bearer token (a full one, and one limited to version + add).

    Its sharding threshold is 1000 bytes, readable only with the full token.
    """
    rules = {
        "full": {"AuthSecret": "bearer:pbp-full-token", "AllowedPaths": ["/api/v0"]},
        "limited": {
            "AuthSecret": "bearer:pbp-limited-token",
            "AllowedPaths": ["/api/v0/version", "/api/v0/add"],
        },
    }
    server = KuboServer(
        tmp_path_factory.mktemp("auth-kubo") / "repo",
        auth=TOKEN,
        config={"API.Authorizations": rules, "Import.UnixFSHAMTDirectorySizeThreshold": 1000},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_auth_token_works_and_missing_token_fails_clearly(auth_kubo: KuboServer, tmp_path: Path) -> None:
    results = make_results(tmp_path / "results", "nested")
    authorized = IPFSNode(api_address=auth_kubo.api_url, auth=SecretStr(TOKEN))
    cid = get_publisher("ipfs")(results, SPEC, CONTEXT, authorized).params.cid  # type: ignore[attr-defined]
    assert cid == import_path(results, PROFILES["unixfs-v1-2025"])
    source = SourceSpec.model_validate({"Type": "ipfs", "Params": {"CID": cid}})
    get_source("ipfs")(source, tmp_path / "dest", authorized)
    assert listing(tmp_path / "dest") == listing(results)

    for auth in (None, SecretStr("Bearer wrong-token")):
        anonymous = IPFSNode(api_address=auth_kubo.api_url, auth=auth)
        with pytest.raises(IPFSPublishError, match=r"refused /version .*IPFSNode\.auth") as caught:
            get_publisher("ipfs")(results, SPEC, CONTEXT, anonymous)
        assert "pbp-full-token" not in str(caught.value) and "wrong-token" not in str(caught.value)
        with pytest.raises(FetchError, match="refused"):
            get_source("ipfs")(source, tmp_path / "dest2", anonymous)
    assert not (tmp_path / "dest2").exists()


def test_node_config_is_read_and_a_mismatch_refused(auth_kubo: KuboServer, tmp_path: Path) -> None:
    # 40 entries × ~45 bytes pass the node's 1000-byte threshold: the node would shard, the profile would not
    results = tmp_path / "results"
    results.mkdir()
    for index in range(40):
        (results / f"an-entry-with-a-name-{index:03d}").write_text(str(index))
    expected = import_path(results, PROFILES["unixfs-v1-2025"])
    full = IPFSNode(api_address=auth_kubo.api_url, auth=SecretStr(TOKEN))
    assert get_publisher("ipfs")(results, SPEC, CONTEXT, full).params.cid == expected  # type: ignore[attr-defined]
    # with a token that may not read config, the node's threshold is unknown: the add runs, the check refuses
    limited = IPFSNode(api_address=auth_kubo.api_url, auth=SecretStr(LIMITED))
    with pytest.raises(IPFSPublishError, match="made .* but the unixfs-v1-2025 profile gives " + expected):
        get_publisher("ipfs")(results, SPEC, CONTEXT, limited)


def test_node_settings_follow_its_version_and_config(kubo: KuboServer, auth_kubo: KuboServer) -> None:
    v1 = PROFILES["unixfs-v1-2025"]
    with KuboClient(kubo.api_url) as client:
        assert node_import_params(client, v1, (0, 42, 0)) == replace(v1, size_estimation="links")
        assert node_import_params(client, v1, (0, 30, 0)) == replace(
            v1, max_file_links=174, size_estimation="links"
        )  # before 0.35 `add` had no max-file-links flag
    with KuboClient(auth_kubo.api_url, auth=SecretStr(TOKEN)) as client:
        assert node_import_params(client, v1, (0, 42, 0)).hamt_threshold == 1000
    with KuboClient(auth_kubo.api_url, auth=SecretStr(LIMITED)) as client:  # config not readable
        assert node_import_params(client, v1, (0, 42, 0)).hamt_threshold == 256 * 1024
