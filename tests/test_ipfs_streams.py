"""Large IPFS results go up as several add requests at once, against the real Kubo daemon (issue 20).

About half of the bytes, as whole files and folders, go up in a second request beside the folder's own; each
file's CID is checked against the local import, the folders and symlinks are built locally and imported as
one CAR, and the root block is put with a recursive pin (as `add` pins its root, nothing read back). What the node ends with must be what
`ipfs add -r` gives: the same CID (with either profile, with modes, whatever the node's sharding config),
the root pinned recursively (or not at all) and no other pin left behind.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import prefect_bacalhau_publish.publishers.ipfs as ipfs_publisher
from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.errors import IPFSPublishError
from prefect_bacalhau_publish.kubo.rpc import KuboClient
from prefect_bacalhau_publish.kubo.tree import Entry
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, import_path
from prefect_bacalhau_publish.publishers.ipfs import STREAM_FROM, publish_folder
from prefect_bacalhau_publish.sources.ipfs import fetch_cid
from prefect_bacalhau_publish.testing import KuboServer

from .test_ipfs_modes import make_moded, mode_add
from .test_ipfs_publish import cli_add, delete_after_scan, ipfs, listing, make_results, recursive_pins

MiB = 1024 * 1024


@pytest.fixture()
def adds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The folder names of the add requests sent (the real requests: the method is only watched)."""
    names: list[str] = []
    add_tree = KuboClient.add_tree

    def watched(self: KuboClient, tree: Any, root_name: bytes, *args: Any, **kwargs: Any) -> dict[str, str]:
        names.append(os.fsdecode(root_name))
        return add_tree(self, tree, root_name, *args, **kwargs)

    monkeypatch.setattr(KuboClient, "add_tree", watched)
    yield names


@pytest.fixture()
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stream results from 1 MiB, so the test folders (a few MiB) take the streamed path."""
    monkeypatch.setattr(ipfs_publisher, "STREAM_FROM", 1 * MiB)


@pytest.mark.usefixtures("small_threshold")
@pytest.mark.parametrize("pin", [True, False])
@pytest.mark.parametrize("profile", ["unixfs-v1-2025", "unixfs-v0-2015"])
def test_streamed_publish_equals_ipfs_add(
    kubo: KuboServer, adds: list[str], tmp_path: Path, profile: str, pin: bool
) -> None:
    results = make_results(tmp_path / "results", "nested")  # symlink, empty file and folder, unicode names
    (results / "outputs" / "second.bin").write_bytes(os.urandom(3 * MiB + 1))
    (results / f"{profile}-{pin}").write_text("a DAG of its own for each case")
    before = recursive_pins(kubo.repo_dir)
    node = IPFSNode(api_address=kubo.api_url, cid_profile=profile, pin=pin)

    cid = publish_folder(results, node)

    assert len(adds) == 2  # the files went up in parallel requests, not as one folder
    assert (
        cid == import_path(results, PROFILES[profile]) == cli_add(kubo.repo_dir, results, PROFILES[profile])
    )
    assert recursive_pins(kubo.repo_dir) - before == ({cid} if pin else set())  # nothing else pinned
    dest = tmp_path / "fetched"
    fetch_cid(cid, dest, node)
    assert listing(dest) == listing(results)


@pytest.mark.usefixtures("small_threshold")
def test_streamed_publish_keeps_modes(kubo: KuboServer, adds: list[str], tmp_path: Path) -> None:
    results = make_moded(tmp_path / "result")
    (results / "outputs" / "more.bin").write_bytes(os.urandom(2 * MiB))
    node = IPFSNode(api_address=kubo.api_url, preserve_mode=True)
    params = PROFILES["unixfs-v1-2025"].with_modes()
    cid = publish_folder(results, node)
    assert len(adds) == 2
    assert cid == mode_add(kubo.repo_dir, results, params) == import_path(results, params)


@pytest.fixture(scope="module")
def sharding_kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboServer]:
    """A Kubo that shards folders from 1000 bytes of links (the profile: from 256 KiB of block)."""
    server = KuboServer(
        tmp_path_factory.mktemp("sharding-kubo") / "repo",
        config={"Import.UnixFSHAMTDirectorySizeThreshold": 1000},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gc_kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboServer]:
    """A Kubo of this module's own, whose garbage collection removes nothing another test relies on."""
    server = KuboServer(tmp_path_factory.mktemp("gc-kubo") / "repo")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.usefixtures("small_threshold")
@pytest.mark.parametrize("profile", ["unixfs-v1-2025", "unixfs-v0-2015"])
def test_the_root_pin_holds_the_whole_dag_through_garbage_collection(
    gc_kubo: KuboServer, adds: list[str], tmp_path: Path, profile: str
) -> None:
    """The root is pinned without Kubo reading its DAG (`block put --pin`, as `add` pins its root), so
    the DAG must be whole on its own: after the staged pins are gone and `repo gc` has run, Kubo verifies
    the pin and the result comes back from the node alone."""
    results = make_results(tmp_path / "results", "nested")
    (results / "outputs" / "second.bin").write_bytes(os.urandom(3 * MiB + 1))
    node = IPFSNode(api_address=gc_kubo.api_url, cid_profile=profile)
    before = recursive_pins(gc_kubo.repo_dir)  # `ipfs init` pins the empty folder
    cid = publish_folder(results, node)
    assert len(adds) == 2
    assert recursive_pins(gc_kubo.repo_dir) - before == {cid}
    ipfs(gc_kubo.repo_dir, "repo", "gc", "--quiet")
    verified = ipfs(gc_kubo.repo_dir, "pin", "verify", "--verbose").splitlines()
    assert f"{cid} ok" in verified and all(line.endswith(" ok") for line in verified), verified
    blocks = json.loads(ipfs(gc_kubo.repo_dir, "dag", "stat", "--progress=false", "--enc=json", cid))
    assert blocks["DagStats"][0]["NumBlocks"] > 4
    dest = tmp_path / "fetched"
    fetch_cid(cid, dest, node)
    assert listing(dest) == listing(results)
    assert cid == import_path(results, PROFILES[profile])


@pytest.mark.usefixtures("small_threshold")
def test_streamed_folders_follow_the_profile_not_the_node(
    sharding_kubo: KuboServer, adds: list[str], tmp_path: Path
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for index in range(40):  # 40 entries × ~45 bytes: the node would shard this folder, the profile not
        (results / f"an-entry-with-a-name-{index:03d}").write_bytes(os.urandom(64 * 1024))
    cid = publish_folder(results, IPFSNode(api_address=sharding_kubo.api_url))
    assert len(adds) == 2
    assert cid == import_path(results, PROFILES["unixfs-v1-2025"])
    assert cid != cli_add(sharding_kubo.repo_dir, results, PROFILES["unixfs-v1-2025"])
    assert cid in recursive_pins(sharding_kubo.repo_dir)


def test_the_default_threshold(kubo: KuboServer, adds: list[str], tmp_path: Path) -> None:
    """Just under STREAM_FROM bytes go up as one folder; at STREAM_FROM, in two requests."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.bin").write_bytes(os.urandom(STREAM_FROM // 2))
    (results / "b.bin").write_bytes(os.urandom(STREAM_FROM // 2 - 1))
    node = IPFSNode(api_address=kubo.api_url)
    assert publish_folder(results, node) == import_path(results, PROFILES["unixfs-v1-2025"])
    assert adds == ["results"]
    adds.clear()
    with (results / "b.bin").open("ab") as grown:
        grown.write(b"!")
    assert publish_folder(results, node) == import_path(results, PROFILES["unixfs-v1-2025"])
    assert len(adds) == 2


@pytest.mark.usefixtures("small_threshold")
def test_the_same_result_published_again_and_at_once(kubo: KuboServer, tmp_path: Path) -> None:
    """Publishing a result the node already pins, or the same result from several tasks at once: every
    publish gives the CID, the root stays pinned and no staging pin is left behind."""
    results = make_results(tmp_path / "results", "nested")
    (results / "more.bin").write_bytes(os.urandom(3 * MiB))
    node = IPFSNode(api_address=kubo.api_url)
    before = recursive_pins(kubo.repo_dir)
    expected = import_path(results, PROFILES["unixfs-v1-2025"])
    assert publish_folder(results, node) == expected
    assert publish_folder(results, node) == expected
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda _: publish_folder(results, node), range(3))) == [expected] * 3
    assert recursive_pins(kubo.repo_dir) - before == {expected}


@pytest.mark.usefixtures("small_threshold")
def test_a_file_gone_mid_stream_is_named_and_nothing_is_pinned(
    kubo: KuboServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "a.bin").write_bytes(os.urandom(3 * MiB))
    (results / "b.bin").write_bytes(os.urandom(2 * MiB))
    delete_after_scan(monkeypatch, results / "b.bin")
    before = recursive_pins(kubo.repo_dir)
    with pytest.raises(IPFSPublishError, match=r"cannot read .*b\.bin while adding it"):
        publish_folder(results, IPFSNode(api_address=kubo.api_url))
    assert recursive_pins(kubo.repo_dir) == before


EMPTY_FILE = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@contextmanager
def lying_node(kubo: KuboServer) -> Iterator[IPFSNode]:
    """A node that forwards every call to the real Kubo but answers each `add` claiming that every file and
    sub-folder it stored is the empty file (a node whose import settings differ, or a hostile one)."""

    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
            upstream = await client.post(
                kubo.api_url + request.url.path,
                params=list(request.query_params.multi_items()),
                content=await request.body(),
                headers={"Content-Type": request.headers.get("content-type", "application/octet-stream")},
            )
        body = upstream.content
        if request.url.path.endswith("/add") and upstream.status_code == 200:
            items = [json.loads(line) for line in body.splitlines() if line.strip()]
            for item in items:
                if "/" in item.get("Name", ""):
                    item["Hash"] = EMPTY_FILE
            body = b"".join(json.dumps(item).encode() + b"\n" for item in items)
        return Response(body, upstream.status_code, media_type=upstream.headers.get("content-type"))

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until the server accepts them
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield IPFSNode(api_address=f"http://127.0.0.1:{sock.getsockname()[1]}")
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


@pytest.mark.usefixtures("small_threshold")
def test_a_node_reporting_other_file_cids_is_refused_and_left_clean(
    kubo: KuboServer, adds: list[str], tmp_path: Path
) -> None:
    results = make_results(tmp_path / "results", "nested")
    (results / "more.bin").write_bytes(os.urandom(3 * MiB))
    before = recursive_pins(kubo.repo_dir)
    with lying_node(kubo) as liar, pytest.raises(IPFSPublishError) as refused:
        publish_folder(results, liar)
    assert len(adds) == 2
    assert f"made {EMPTY_FILE} of {results}" in str(refused.value)
    assert re.search(
        r"the unixfs-v1-2025 profile gives baf[ky]\w+: the node applies other", str(refused.value)
    )
    assert str(refused.value).endswith("refusing to publish the folder")
    assert recursive_pins(kubo.repo_dir) == before  # the staging folders are unpinned again
    assert import_path(results, PROFILES["unixfs-v1-2025"]) not in ipfs(kubo.repo_dir, "pin", "ls", "-q")


def _tree(name: bytes, spec: dict[str, Any]) -> Entry:
    """A scanned-tree shape from {"name": size or {...}} (no files on disk: `_carve` reads none)."""
    children = [
        _tree(key.encode(), value)
        if isinstance(value, dict)
        else Entry(key.encode(), Path(key), "file", size=value)
        for key, value in sorted(spec.items())
    ]
    return Entry(name, Path(name.decode()), "dir", children=children)


@pytest.mark.parametrize(
    "spec",
    [
        {"a": 10, "b": 10, "c": 10, "d": 10},
        {"exitCode": 1, "outputs": {f"part-{i}": {f"f{j}": 7 + i * j for j in range(9)} for i in range(5)}},
        {"big": 1000, "small": {"x": 3, "y": 4}, "z": 5},
        {"a": {"b": {"c": {"d": 64, "e": 64}}}, "f": 1},
    ],
)
def test_carving_takes_whole_entries_after_at_most_one_carved_folder(spec: dict[str, Any]) -> None:
    """In each folder, at most one sub-folder is carved, everything taken from that folder sorts after it
    (a suffix of the name order), and files are neither lost nor doubled."""
    tree = _tree(b"result", spec)
    total = sum(entry.size for entry, _path in ipfs_publisher._files(tree))
    kept, taken = ipfs_publisher._carve(tree, total // 2)

    def check(original: Entry, carved: Entry) -> None:
        originals = {child.name: child for child in original.children}
        names = [child.name for child in carved.children]
        assert names == sorted(names) and set(names) <= set(originals)
        changed = [child for child in carved.children if child is not originals[child.name]]
        assert len(changed) <= 1  # one carved sub-folder at most; the rest kept whole
        gone = [originals[name] for name in originals if name not in names]
        assert all(entry in taken for entry in gone)
        if changed:
            assert all(entry.name > changed[0].name for entry in gone)
            check(originals[changed[0].name], changed[0])

    check(tree, kept)
    sent = [entry for entry, _ in ipfs_publisher._files(kept)]
    sent += [entry for whole in taken for entry, _ in ipfs_publisher._files(whole)]  # a file gives itself
    assert sorted(map(id, sent)) == sorted(id(entry) for entry, _ in ipfs_publisher._files(tree))
    taken_bytes = total - sum(entry.size for entry, _ in ipfs_publisher._files(kept))
    assert 0 < taken_bytes <= total // 2
