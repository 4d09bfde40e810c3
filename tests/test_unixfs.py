"""Local UnixFS CIDs: known vectors, and live comparison with the real `ipfs add` for random trees."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_bacalhau_publish.kubo.cid import CID, b58decode, b58encode, encode_varint, read_varint
from prefect_bacalhau_publish.kubo.dagpb import (
    FILE,
    PBLink,
    UnixFSData,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs,
)
from prefect_bacalhau_publish.kubo.hamt import murmur3_64
from prefect_bacalhau_publish.kubo.unixfs import (
    PROFILES,
    FileBuilder,
    ImportParams,
    UnsupportedEntryError,
    cid_string,
    import_path,
    scan,
    shape_cid,
)
from prefect_bacalhau_publish.testing import KuboServer, binary

V0 = PROFILES["unixfs-v0-2015"]
V1 = PROFILES["unixfs-v1-2025"]


def cli_add(ipfs_path: Path, target: Path, params: ImportParams) -> str:
    """`ipfs add -r -H` with every CID-deciding flag of `params`: the baseline.

    A real add, not `--only-hash`: Kubo 0.42 shards some directories differently with `-n`.
    """
    args = [
        str(binary("ipfs")),
        "add",
        "-r",
        "-H",
        "-Q",
        "--pin=false",
        f"--cid-version={params.cid_version}",
        f"--raw-leaves={str(params.raw_leaves).lower()}",
        f"--chunker={params.chunker}",
        f"--max-file-links={params.max_file_links}",
        f"--max-hamt-fanout={params.hamt_fanout}",
        str(target),
    ]
    env = {**os.environ, "IPFS_PATH": str(ipfs_path)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def offline_repo(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Make (once per config) an offline Kubo repo with extra `ipfs config --json` settings."""
    made: dict[str, Path] = {}

    def make(profile: str = "test", **config: Any) -> Path:
        key = repr((profile, sorted(config.items())))
        if key not in made:
            server = KuboServer(tmp_path_factory.mktemp("offline") / "repo")
            done = server._ipfs("init", "--profile", profile)
            assert done.returncode == 0, done.stderr
            for name, value in config.items():
                done = server._ipfs("config", "--json", name, value)
                assert done.returncode == 0, done.stderr
            made[key] = server.repo_dir
        return made[key]

    return make


# ------------------------------------------------------------------------------------------ vectors


def test_known_vectors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "hello").write_bytes(b"hello world\n")
    assert import_path(tmp_path / "empty", V0) == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
    assert import_path(tmp_path / "hello", V0) == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert (
        cid_string(FileBuilder(V1).finish().cid)
        == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    )
    assert cid_string(FileBuilder(V0).finish().cid) == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"


def test_murmur3_matches_reference_values() -> None:
    # MurmurHash3_x64_128, seed 0, first 64 bits (h1) — the hash boxo's HAMT uses
    assert murmur3_64(b"") == 0
    assert murmur3_64(b"hello") == 0xCBD8A7B341BD9B02
    assert murmur3_64(b"The quick brown fox jumps over the lazy dog") == 0xE34BBC7BBC071B6C


def test_cid_round_trips() -> None:
    for text in (
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    ):
        cid = CID.parse(text)
        assert str(cid) == text
        assert CID.from_bytes(bytes(cid)) == cid
    v1 = CID.parse("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
    assert CID.parse("z" + b58encode(bytes(v1))) == v1
    assert CID.parse("f" + bytes(v1).hex()) == v1
    assert v1.verify(b"") and not v1.verify(b"x")
    with pytest.raises(ValueError, match="not a valid CID"):
        CID.parse("bnotacid!!")


@given(st.integers(min_value=0, max_value=2**63 - 1), st.binary(max_size=40))
def test_varint_and_base58_round_trip(value: int, data: bytes) -> None:
    encoded = encode_varint(value)
    assert read_varint(encoded + b"tail") == (value, len(encoded))
    assert b58decode(b58encode(data)) == data


def test_dagpb_round_trip() -> None:
    data = encode_unixfs(UnixFSData(FILE, b"abc", 10, (3, 7)))
    links = [
        PBLink(b"\x12\x20" + bytes(32), b"", 5),
        PBLink(b"\x12\x20" + bytes(range(32)), "é".encode(), 300),
    ]
    block = encode_node(links, data)
    assert decode_node(block) == (links, data)
    assert decode_unixfs(data) == UnixFSData(FILE, b"abc", 10, (3, 7))
    with pytest.raises(ValueError):
        decode_node(b"\x0a\x05ab")


def test_scan_refuses_fifos(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UnsupportedEntryError, match="pipe"):
        scan(tmp_path)


# ------------------------------------------------------------------------------ live comparisons

_names = st.text(
    alphabet=st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="/\0"),
    min_size=1,
    max_size=10,
).filter(lambda name: name not in (".", "..") and len(name.encode()) < 200)
_trees = st.recursive(
    st.binary(max_size=4000),
    lambda children: st.dictionaries(_names, children, max_size=5),
    max_leaves=12,
)
_SMALL = {
    "v0-small": ImportParams(cid_version=0, raw_leaves=False, chunk_size=1024, max_file_links=3),
    "v1-small": ImportParams(cid_version=1, raw_leaves=True, chunk_size=1000, max_file_links=2),
    "v0-raw": ImportParams(cid_version=0, raw_leaves=True, chunk_size=700, max_file_links=4),
    "v0-2015": V0,
    "v1-2025": V1,
}


def _write_tree(root: Path, tree: dict[str, Any]) -> None:
    root.mkdir()
    for name, value in tree.items():
        if isinstance(value, dict):
            _write_tree(root / name, value)
        else:
            (root / name).write_bytes(value)


@pytest.mark.parametrize("label", list(_SMALL))
@settings(
    max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=st.dictionaries(_names, _trees, max_size=6))
def test_random_trees_match_kubo(kubo: KuboServer, label: str, tree: dict[str, Any]) -> None:
    params = _SMALL[label]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        _write_tree(root, tree)
        assert import_path(root, params) == cli_add(kubo.repo_dir, root, params)


@pytest.mark.parametrize(
    "params",
    [
        ImportParams(cid_version=0, raw_leaves=False, chunk_size=1024),  # 174 links per node
        ImportParams(cid_version=1, raw_leaves=True, chunk_size=256, max_file_links=1024),
        ImportParams(cid_version=1, raw_leaves=True, chunk_size=1024, max_file_links=3),
    ],
    ids=["v0-174", "v1-1024", "v1-3"],
)
def test_chunk_and_link_boundaries_match_kubo(kubo: KuboServer, tmp_path: Path, params: ImportParams) -> None:
    chunk, links = params.chunk_size, params.max_file_links
    sizes = {0, 1, chunk - 1, chunk, chunk + 1, chunk * links - 1, chunk * links, chunk * links + 1}
    if links < 10:
        sizes |= {chunk * links * links, chunk * links * links + 1, chunk * links**3 + 5}
    data = os.urandom(max(sizes))
    for size in sizes:
        (tmp_path / f"f{size}").write_bytes(data[:size])
    assert import_path(tmp_path, params) == cli_add(kubo.repo_dir, tmp_path, params)
    for size in (0, chunk + 1, chunk * links + 1):  # single files too (a lone leaf or a tree)
        assert import_path(tmp_path / f"f{size}", params) == cli_add(
            kubo.repo_dir, tmp_path / f"f{size}", params
        )


@pytest.mark.parametrize("estimation", ["links", "block"])
@settings(
    max_examples=6, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(_names, min_size=1, max_size=70, unique=True), fanout=st.sampled_from([8, 16, 256]))
def test_random_hamt_directories_match_kubo(
    offline_repo: Callable[..., Path], estimation: str, names: list[str], fanout: int
) -> None:
    # a tiny sharding threshold makes even small folders HAMTs, with nested shards at fanout 8
    repo = offline_repo(
        **{
            "Import.UnixFSHAMTDirectorySizeThreshold": "300",
            "Import.UnixFSHAMTDirectorySizeEstimation": f'"{estimation}"',
        }
    )
    params = replace(V1, hamt_threshold=300, hamt_fanout=fanout, size_estimation=estimation)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dir"
        (root / "sub").mkdir(parents=True)
        for index, name in enumerate(names):
            (root / name if index % 3 else root / "sub" / name).write_bytes(name.encode() * (index % 4))
        assert import_path(root, params) == cli_add(repo, root, params)


def test_hamt_threshold_depends_on_estimation_mode(offline_repo: Callable[..., Path], tmp_path: Path) -> None:
    # 4500 names of 20 bytes: 252 000 bytes by "links", ~288 000 by "block" — one side of 256 KiB each
    for index in range(4500):
        (tmp_path / f"n{index:019d}").write_bytes(b"")
    links_params = replace(V1, size_estimation="links")
    by_links, by_block = import_path(tmp_path, links_params), import_path(tmp_path, V1)
    assert by_links != by_block
    assert by_links == cli_add(offline_repo(), tmp_path, links_params)
    assert by_block == cli_add(offline_repo("test,unixfs-v1-2025"), tmp_path, V1)
    tree = scan(tmp_path)
    assert shape_cid(tree, links_params) != shape_cid(tree, V1)
    assert shape_cid(tree, replace(V1, chunk_size=4096)) == shape_cid(tree, V1)  # empty files: no chunks
