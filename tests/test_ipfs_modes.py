"""IPFS results and modes, and what the IPFS publisher refuses, against the real Kubo daemon.

With `preserve_mode`, a published CID equals `ipfs add -r --preserve-mode` (Kubo's own Go client talking to
the same daemon, or Kubo in-process on an offline repo) and the local importer's; `get` restores permission
bits. Symlinks that `get` would refuse are refused before anything reaches the node, and refusals on both
sides name the path inside the result.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.errors import IPFSPublishError, UnsafeArchiveError
from prefect_bacalhau_publish.kubo.car import encode_frame, encode_header
from prefect_bacalhau_publish.kubo.cid import CID, DAG_PB, RAW, sha256_cid
from prefect_bacalhau_publish.kubo.dagpb import (
    DIRECTORY,
    FILE,
    HAMT_SHARD,
    SYMLINK,
    PBLink,
    UnixFSData,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs,
)
from prefect_bacalhau_publish.kubo.rpc import KuboClient, add_flags
from prefect_bacalhau_publish.kubo.unixfs import PROFILES, ImportParams, import_path, import_tree, scan
from prefect_bacalhau_publish.publishers.ipfs import publish_folder
from prefect_bacalhau_publish.resolve import fetch_result
from prefect_bacalhau_publish.sources.ipfs import fetch_cid
from prefect_bacalhau_publish.specs import PublishedResult
from prefect_bacalhau_publish.testing import KuboServer, binary

from .test_ipfs_publish import cli_add, ipfs, listing

PROFILE_NAMES = ["unixfs-v1-2025", "unixfs-v0-2015"]
ROOT = os.geteuid() == 0


def mode_add(repo: Path, target: Path, params: ImportParams) -> str:
    """The baseline: `ipfs add -r -H --preserve-mode` with every CID-deciding flag of `params`, not pinned."""
    return ipfs(
        repo, "add", "-r", "-H", "-Q", "--pin=false", "--preserve-mode", "--raw-leaves=false",
        f"--cid-version={params.cid_version}", f"--chunker={params.chunker}",
        f"--max-file-links={params.max_file_links}", f"--max-hamt-fanout={params.hamt_fanout}", str(target),
    )  # fmt: skip


def node_at(repo: Path, ref: str) -> tuple[int, UnixFSData]:
    """Codec and UnixFS data of the block an IPFS path (`CID/sub/path`) resolves to on the node."""
    cid = CID.parse(ipfs(repo, "resolve", "-r", f"/ipfs/{ref}").removeprefix("/ipfs/"))
    env = {**os.environ, "IPFS_PATH": str(repo)}
    done = subprocess.run([str(binary("ipfs")), "block", "get", str(cid)], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    if cid.codec == RAW:
        return RAW, UnixFSData(0, done.stdout)
    _links, data = decode_node(done.stdout)
    assert data is not None
    return cid.codec, decode_unixfs(data)


def perms(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def make_moded(root: Path) -> Path:
    """A result with the modes worth keeping: scripts, private keys, read-only folders, setuid."""
    out = root / "outputs"
    (out / "scratch").mkdir(parents=True)
    (out / "sealed").mkdir()
    (root / "stdout").write_text("ok\n")
    files = {
        "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "key": (b"secret", 0o600),
        "empty": (b"", 0o644),
        "small.txt": (b"one chunk", 0o444),
        "big.bin": (os.urandom(2 * 1024 * 1024 + 12345), 0o640),  # several chunks in both profiles
        "suid": (b"#!/bin/sh\n", 0o4755),
        "sealed/note": (b"inside a read-only folder", 0o644),
    }
    for name, (data, mode) in files.items():
        (out / name).write_bytes(data)
        (out / name).chmod(mode)
    (out / "latest").symlink_to("run.sh")
    (out / "scratch").chmod(0o700)
    (out / "sealed").chmod(0o555)
    root.chmod(0o750)
    return root


@pytest.fixture()
def node(kubo: KuboServer) -> IPFSNode:
    return IPFSNode(api_address=kubo.api_multiaddr, preserve_mode=True)


# ------------------------------------------------------------------------------- publish with modes


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_modes_match_kubo_and_come_back(
    kubo: KuboServer, node: IPFSNode, tmp_path: Path, profile: str
) -> None:
    results = make_moded(tmp_path / "result")
    params = PROFILES[profile].with_modes()
    cid = publish_folder(results, node.model_copy(update={"cid_profile": profile}))
    assert cid == mode_add(kubo.repo_dir, results, params) == import_path(results, params)
    assert cid != cli_add(kubo.repo_dir, results, PROFILES[profile])  # modes change the CID

    stored = {rel: node_at(kubo.repo_dir, f"{cid}/{rel}" if rel else cid) for rel in (
        "", "outputs/run.sh", "outputs/key", "outputs/empty", "outputs/small.txt", "outputs/big.bin",
        "outputs/suid", "outputs/latest", "outputs/scratch", "outputs/sealed",
    )}  # fmt: skip
    assert {rel: data.mode for rel, (_codec, data) in stored.items()} == {
        "": 0o750,
        "outputs/run.sh": 0o755,
        "outputs/key": 0o600,
        "outputs/empty": 0o644,
        "outputs/small.txt": 0o444,
        "outputs/big.bin": 0o640,
        "outputs/suid": 0o4755,  # Kubo keeps setuid, setgid and sticky (07777), not the file type
        "outputs/latest": None,  # and no mode on symlinks
        "outputs/scratch": 0o700,
        "outputs/sealed": 0o555,
    }
    codec, small = stored["outputs/small.txt"]
    assert (codec, small.type, small.data) == (DAG_PB, FILE, b"one chunk")  # a dag-pb leaf, not raw
    _codec, big = stored["outputs/big.bin"]
    assert len(big.blocksizes) > 1  # the root above the chunks carries the mode ...
    first = os.path.basename(ipfs(kubo.repo_dir, "refs", f"{cid}/outputs/big.bin").split()[0])
    assert node_at(kubo.repo_dir, first)[1].mode is None  # ... its leaves do not

    dest = fetch_cid(cid, tmp_path / "fetched", node)
    assert listing(dest) == listing(results)
    got = {name: perms(dest / "outputs" / name) for name in stored_names(results)}
    assert got == {
        "run.sh": 0o755,
        "key": 0o600,
        "empty": 0o644,
        "small.txt": 0o444,
        "big.bin": 0o640,
        "suid": 0o755,  # permission bits only: never setuid on fetch
        "scratch": 0o700,
        "sealed": 0o555,
        "sealed/note": 0o644,
    }
    (dest / "outputs" / "sealed").chmod(0o755)  # let pytest clean up


def stored_names(results: Path) -> list[str]:
    out = results / "outputs"
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_symlink())


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_without_preserve_mode_cids_and_modes_are_plain(
    kubo: KuboServer, node: IPFSNode, tmp_path: Path, profile: str
) -> None:
    results = make_moded(tmp_path / "result")
    plain = node.model_copy(update={"cid_profile": profile, "preserve_mode": False})
    cid = publish_folder(results, plain)
    assert (
        cid == cli_add(kubo.repo_dir, results, PROFILES[profile]) == import_path(results, PROFILES[profile])
    )
    assert node_at(kubo.repo_dir, cid)[1].mode is None
    dest = fetch_cid(cid, tmp_path / "fetched", plain)
    umask = os.umask(0)
    os.umask(umask)
    assert perms(dest / "outputs" / "run.sh") == perms(dest / "outputs" / "key") == 0o666 & ~umask
    (results / "outputs" / "sealed").chmod(0o755)


def file_sizes(params: ImportParams) -> list[int]:
    """File sizes on every chunk and link boundary, where the root may be built before the file ends."""
    chunk, links = params.chunk_size, params.max_file_links
    edges = {0, 1, chunk - 1, chunk, chunk + 1, chunk * links - 1, chunk * links, chunk * links + 1}
    if links < 10:
        edges |= {chunk * links * links, chunk * links * links + 1}
    return sorted(edges)


@pytest.mark.parametrize(
    "params",
    [
        ImportParams(cid_version=1, chunk_size=1024, max_file_links=3).with_modes(),
        ImportParams(cid_version=0, chunk_size=1024).with_modes(),  # 174 links per node
    ],
    ids=["v1-3-links", "v0-174-links"],
)
def test_file_boundaries_and_odd_modes_match_kubo(
    kubo: KuboServer, tmp_path: Path, params: ImportParams
) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    odd = [0o644, 0o755, 0o600, 0o4711, 0o2640, 0o1777, 0o400] + ([0o000] if ROOT else [])
    data = os.urandom(max(file_sizes(params)))
    for index, size in enumerate(file_sizes(params)):
        path = folder / f"f{size:07d}"
        path.write_bytes(data[:size])
        path.chmod(odd[index % len(odd)])  # mode 0 on a file: Kubo stores no mode
    for name, mode in [("sticky", 0o1777), ("setgid", 0o2750)] + ([("closed", 0o000)] if ROOT else []):
        (folder / name).mkdir()
        (folder / name).chmod(mode)  # mode 0 on a folder: Kubo stores mode 0
    folder.chmod(0o711)
    expected = mode_add(kubo.repo_dir, folder, params)
    with KuboClient(kubo.api_url) as client:  # our multipart, same daemon
        assert client.add_folder(folder, add_flags(params, pin=False)) == expected
    assert import_path(folder, params) == expected
    for size in file_sizes(params):  # single files: a lone leaf or a tree, carrying the mode
        assert import_path(folder / f"f{size:07d}", params) == mode_add(
            kubo.repo_dir, folder / f"f{size:07d}", params
        )
    if ROOT:
        assert node_at(kubo.repo_dir, f"{expected}/closed")[1].mode == 0
        closed_file = next(p.name for p in folder.iterdir() if p.is_file() and perms(p) == 0)
        assert node_at(kubo.repo_dir, f"{expected}/{closed_file}")[1].mode is None


# ------------------------------------------------------------------------------------ sharded folders


def make_many(root: Path, names: list[str]) -> Path:
    root.mkdir()
    for index, name in enumerate(names):
        (root / name).write_bytes(b"x" * (index % 3))
        (root / name).chmod((0o644, 0o755, 0o600)[index % 3])
    root.chmod(0o750)
    return root


def test_sharded_folder_published_by_add_keeps_modes(
    kubo: KuboServer, node: IPFSNode, tmp_path: Path
) -> None:
    # 6000 × 16-byte names: sharded by this node and by the profile alike, so `add` publishes it
    results = make_many(tmp_path / "results", [f"result-{i:05d}.txt" for i in range(6000)])
    params = PROFILES["unixfs-v0-2015"].with_modes()
    cid = publish_folder(results, node.model_copy(update={"cid_profile": "unixfs-v0-2015"}))
    assert cid == mode_add(kubo.repo_dir, results, params) == import_path(results, params)
    _codec, top = node_at(kubo.repo_dir, cid)
    assert (top.type, top.mode) == (HAMT_SHARD, 0o750)  # the root shard carries the folder's mode
    dest = fetch_cid(cid, tmp_path / "fetched", node)
    assert [perms(dest / f"result-{i:05d}.txt") for i in range(3)] == [0o644, 0o755, 0o600]


def test_sharded_folder_published_as_a_car_keeps_modes(
    kubo: KuboServer, node: IPFSNode, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 4500 × 20-byte names: a basic folder for this node ("links" estimate), a HAMT for the profile ("block")
    results = make_many(tmp_path / "results", [f"n{i:019d}" for i in range(4500)])
    params = PROFILES["unixfs-v1-2025"].with_modes()
    cid = publish_folder(results, node)
    profile_repo = tmp_path_factory.mktemp("v1-2025") / "repo"
    ipfs(profile_repo, "init", "--profile", "test,unixfs-v1-2025")
    assert cid == mode_add(profile_repo, results, params) == import_path(results, params)
    assert cid != mode_add(kubo.repo_dir, results, params)  # so it went through dag/import
    _codec, top = node_at(kubo.repo_dir, cid)
    assert (top.type, top.mode) == (HAMT_SHARD, 0o750)
    inner = ipfs(kubo.repo_dir, "refs", cid).split()[0]
    assert node_at(kubo.repo_dir, inner)[1].mode is None  # a child shard: no mode


def test_sharding_threshold_counts_the_folders_mode(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # a folder of symlinks (which carry no mode) just at the threshold: its own mode's 3 bytes tip it over
    folder = tmp_path / "links"
    folder.mkdir()
    for index in range(12):
        (folder / f"link-{index:02d}").symlink_to(f"target-{index}")
    folder.chmod(0o755)
    base = replace(PROFILES["unixfs-v1-2025"], raw_leaves=False, hamt_threshold=10**9)
    blocks: dict[bytes, bytes] = {}
    root = import_tree(scan(folder), base, lambda cid, block: blocks.__setitem__(cid, block))
    threshold = len(blocks[root.cid])  # the block without a mode: not over it; with a mode: 3 bytes over
    repo = tmp_path_factory.mktemp("threshold") / "repo"
    ipfs(repo, "init", "--profile", "test,unixfs-v1-2025")
    ipfs(repo, "config", "--json", "Import.UnixFSHAMTDirectorySizeThreshold", str(threshold))
    for params in (
        replace(base, hamt_threshold=threshold),
        replace(base, hamt_threshold=threshold).with_modes(),
    ):
        local = import_path(folder, params)
        expected = mode_add(repo, folder, params) if params.preserve_mode else cli_add(repo, folder, params)
        assert local == expected
        kind = node_at(repo, local)[1].type
        assert kind == (HAMT_SHARD if params.preserve_mode else DIRECTORY)


# ---------------------------------------------------------------------------------------------- get


def test_get_fills_read_only_folders_as_an_ordinary_user(node: IPFSNode, tmp_path: Path) -> None:
    results = tmp_path / "result"
    (results / "locked" / "inner").mkdir(parents=True)
    (results / "locked" / "inner" / "f").write_text("x")
    (results / "locked" / "g").write_text("y")
    (results / "locked" / "inner" / "f").chmod(0o400)
    (results / "locked" / "g").chmod(0o444)
    (results / "locked" / "inner").chmod(0o555)
    (results / "locked").chmod(0o555)
    cid = publish_folder(results, node)
    fetch_cid(cid, tmp_path / "warm", node)  # every module the fetch needs is loaded before a fork
    home = Path(tempfile.mkdtemp(prefix="pbp-nobody-"))  # pytest's tmp_path is closed to other users
    try:
        run_unprivileged(home, lambda: fetch_cid(cid, home / "got", node))
        got = home / "got" / "locked"
        assert (perms(got), perms(got / "inner"), perms(got / "inner" / "f"), perms(got / "g")) == (
            0o555, 0o555, 0o400, 0o444,
        )  # fmt: skip
        assert (got / "inner" / "f").read_text() == "x"
        if ROOT:
            assert (got / "inner" / "f").stat().st_uid == 65534
    finally:
        for path in (home, tmp_path / "warm", results):
            subprocess.run(["chmod", "-R", "u+rwx", str(path)], check=False)
        shutil.rmtree(home)


def run_unprivileged(home: Path, work: Callable[[], object]) -> None:
    """Run `work` as `nobody` in a forked child when we are root (root ignores modes), else here."""
    if not ROOT:
        work()
        return
    os.chown(home, 65534, 65534)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            work()
            code = 0
        except BaseException as exc:
            os.write(2, f"{type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the fetch failed for an ordinary user"


# ------------------------------------------------------------------------------------------ refusals


def local_refs(kubo: KuboServer) -> tuple[set[str], set[str]]:
    return set(ipfs(kubo.repo_dir, "refs", "local").split()), set(
        ipfs(kubo.repo_dir, "pin", "ls", "--type=recursive", "-q").split()
    )


@pytest.mark.parametrize(
    ("links", "shown"),
    [
        ({"outputs/host": "/etc/hostname"}, "'outputs/host' -> '/etc/hostname'"),
        ({"outputs/up": "../../etc"}, "'outputs/up' -> '../../etc'"),
        ({"top": "../sibling"}, "'top' -> '../sibling'"),
        ({"dot": ".", "up": "dot/.."}, "'up' -> 'dot/..'"),  # lexically inside, out through `dot`
    ],
    ids=["absolute", "climbs-out", "climbs-out-at-top", "through-another-link"],
)
@pytest.mark.parametrize("preserve_mode", [False, True])
def test_links_get_would_refuse_are_not_published(
    kubo: KuboServer, node: IPFSNode, tmp_path: Path, links: dict[str, str], shown: str, preserve_mode: bool
) -> None:
    results = tmp_path / "result"
    (results / "outputs").mkdir(parents=True)
    (results / "outputs" / "unique.bin").write_bytes(os.urandom(4096))  # would be a new block on the node
    for rel, target in links.items():
        (results / rel).symlink_to(target)
    before = local_refs(kubo)
    with pytest.raises(IPFSPublishError, match="refusing to publish it") as caught:
        publish_folder(results, node.model_copy(update={"preserve_mode": preserve_mode}))
    assert shown in str(caught.value)
    assert str(tmp_path) not in str(caught.value)  # the path inside the result, not where it sits
    assert local_refs(kubo) == before  # the node received nothing: no block, no pin


def test_links_inside_the_result_stay_symlinks(kubo: KuboServer, node: IPFSNode, tmp_path: Path) -> None:
    results = tmp_path / "result"
    (results / "outputs" / "a" / "b").mkdir(parents=True)
    (results / "stdout").write_text("ok\n")
    (results / "outputs" / "a" / "b" / "deep").symlink_to("../../../stdout")
    (results / "outputs" / "here").symlink_to(".")
    (results / "outputs" / "via").symlink_to("here/a/b/deep")
    cid = publish_folder(results, node)
    assert node_at(kubo.repo_dir, f"{cid}/outputs/via")[1] == UnixFSData(SYMLINK, b"here/a/b/deep")
    assert listing(fetch_cid(cid, tmp_path / "fetched", node)) == listing(results)


def test_fifo_is_refused_by_its_path_inside_the_result(node: IPFSNode, tmp_path: Path) -> None:
    (tmp_path / "result" / "outputs").mkdir(parents=True)
    os.mkfifo(tmp_path / "result" / "outputs" / "pipe")
    with pytest.raises(IPFSPublishError, match=r"^'outputs/pipe' in the result folder is a FIFO"):
        publish_folder(tmp_path / "result", node)


def import_dag(node: IPFSNode, outputs: list[tuple[bytes, bytes, bytes]]) -> str:
    """Import (bypassing the publisher) a result whose `outputs` folder holds (name, CID, block) entries."""
    blocks = [(cid, block) for _name, cid, block in outputs]
    folder = encode_node(
        [PBLink(cid, name, len(block)) for name, cid, block in outputs], encode_unixfs(UnixFSData(DIRECTORY))
    )
    blocks.append((sha256_cid(folder, DAG_PB, 1), folder))
    top = encode_node([PBLink(blocks[-1][0], b"outputs", len(folder))], encode_unixfs(UnixFSData(DIRECTORY)))
    root = sha256_cid(top, DAG_PB, 1)
    car = [encode_header([root]), *(encode_frame(cid, block) for cid, block in [*blocks, (root, top)])]
    with KuboClient.from_node(node) as client:
        (root_cid,) = client.dag_import(car, pin=True)
    return root_cid


def symlink(name: bytes, target: bytes) -> tuple[bytes, bytes, bytes]:
    block = encode_node([], encode_unixfs(UnixFSData(SYMLINK, target)))
    return name, sha256_cid(block, DAG_PB, 1), block


def raw(name: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    return name, sha256_cid(data, RAW, 1), data


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (
            [symlink(b"host", b"/etc/hostname")],
            "refusing symlink 'outputs/host' -> '/etc/hostname': its target is absolute",
        ),
        ([symlink(b"up", b"../../x")], "refusing symlink 'outputs/up' -> '../../x': its target climbs out"),
        (
            [symlink(b"dot", b"."), symlink(b"up", b"dot/../..")],
            "refusing symlink 'outputs/up' -> 'dot/../..': it resolves outside the result",
        ),
        ([raw(b"..", b"x")], "refusing entry name b'..' in folder 'outputs'"),
        ([raw(b"same", b"x"), raw(b"same", b"y")], "refusing duplicate entry 'outputs/same'"),
    ],
    ids=["absolute", "climbs-out", "through-another-link", "dotdot", "duplicate"],
)
def test_get_refusals_name_the_path_inside_the_result(
    node: IPFSNode, tmp_path: Path, outputs: list[tuple[bytes, bytes, bytes]], message: str
) -> None:
    cid = import_dag(node, outputs)
    spec = PublishedResult.model_validate({"Type": "ipfs", "Params": {"CID": cid}})
    (tmp_path / "in").mkdir()
    with pytest.raises(UnsafeArchiveError) as caught:
        fetch_result(spec, tmp_path / "in" / "dest", ipfs=node)
    assert message in str(caught.value)
    assert str(tmp_path) not in str(caught.value) and ".pbp-get" not in str(caught.value)
    assert os.listdir(tmp_path / "in") == []


def test_mode_field_encoding() -> None:
    folder = UnixFSData(DIRECTORY, mode=0o755)
    assert encode_unixfs(folder) == bytes.fromhex("080138ed03")  # field 7 after the type, as Kubo writes it
    assert decode_unixfs(encode_unixfs(folder)) == folder
    with_mtime = bytes.fromhex("0802" + "4202" + "0801")  # field 8 (mtime) is skipped when read
    assert decode_unixfs(with_mtime) == UnixFSData(FILE)
    assert PROFILES["unixfs-v1-2025"].with_modes().raw_leaves is False
    with pytest.raises(ValueError, match="raw-leaves"):
        replace(PROFILES["unixfs-v1-2025"], preserve_mode=True)
