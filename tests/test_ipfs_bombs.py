"""DAGs that are small as CARs but hostile once written: expansion bombs and symlinks escaping via symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefect_bacalhau_publish.blocks import IPFSNode
from prefect_bacalhau_publish.errors import UnsafeArchiveError
from prefect_bacalhau_publish.kubo.car import CarStore, encode_frame, encode_header
from prefect_bacalhau_publish.kubo.cid import CID, DAG_PB, sha256_cid
from prefect_bacalhau_publish.kubo.dagpb import (
    DIRECTORY,
    SYMLINK,
    PBLink,
    UnixFSData,
    encode_node,
    encode_unixfs,
)
from prefect_bacalhau_publish.kubo.export import export_dag
from prefect_bacalhau_publish.kubo.rpc import KuboClient
from prefect_bacalhau_publish.sources import get_source
from prefect_bacalhau_publish.specs import SourceSpec
from prefect_bacalhau_publish.testing import KuboServer

RAW = 0x55


def folder(entries: list[tuple[bytes, bytes, int]]) -> tuple[bytes, bytes]:
    block = encode_node(
        [PBLink(cid, name, size) for name, cid, size in entries], encode_unixfs(UnixFSData(DIRECTORY))
    )
    return sha256_cid(block, DAG_PB, 1), block


def symlink(target: bytes) -> tuple[bytes, bytes]:
    block = encode_node([], encode_unixfs(UnixFSData(SYMLINK, target)))
    return sha256_cid(block, DAG_PB, 1), block


def bomb(levels: int, fanout: int, leaf_size: int) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Folders of `fanout` entries that all link the same child, `levels` deep, over one raw leaf."""
    leaf = os.urandom(leaf_size)
    cid = sha256_cid(leaf, RAW, 1)
    blocks = [(cid, leaf)]
    size = leaf_size
    for _ in range(levels):
        cid, block = folder([(f"e{i:03d}".encode(), cid, size) for i in range(fanout)])
        blocks.append((cid, block))
        size = size * fanout + len(block)
    return cid, blocks


def car_file(path: Path, root: bytes, blocks: list[tuple[bytes, bytes]]) -> Path:
    path.write_bytes(encode_header([root]) + b"".join(encode_frame(cid, block) for cid, block in blocks))
    return path


@pytest.mark.parametrize(
    ("levels", "fanout", "leaf", "caps", "message"),
    [
        (3, 64, 4096, {"max_bytes": 100 * 4096}, "expands to more than"),  # 64**3 files of one 4 KiB block
        (4, 64, 1, {"max_entries": 5000}, "more than 5000 entries"),  # 16.8 M entries from a 40 KiB CAR
    ],
)
def test_expansion_bombs_are_capped(
    tmp_path: Path, levels: int, fanout: int, leaf: int, caps: dict[str, int], message: str
) -> None:
    root, blocks = bomb(levels, fanout, leaf)
    path = car_file(tmp_path / "bomb.car", root, blocks)
    assert path.stat().st_size < 300_000
    with CarStore.load(path) as store, pytest.raises(UnsafeArchiveError, match=message):
        export_dag(store, CID.from_bytes(root), tmp_path / "out", **caps)


def test_symlink_escaping_through_another_symlink_is_refused(kubo: KuboServer, tmp_path: Path) -> None:
    dot_cid, dot = symlink(b".")  # inside on its own
    up_cid, up = symlink(b"dot/..")  # lexically inside, but dot is the root, so this is the root's parent
    root, top = folder([(b"dot", dot_cid, len(dot)), (b"up", up_cid, len(up))])
    node = IPFSNode(api_address=kubo.api_url)
    car = [
        encode_header([root]),
        encode_frame(dot_cid, dot),
        encode_frame(up_cid, up),
        encode_frame(root, top),
    ]
    with KuboClient.from_node(node) as client:
        (root_cid,) = client.dag_import(car, pin=True)
    source = SourceSpec.model_validate({"Type": "ipfs", "Params": {"CID": root_cid}})
    (tmp_path / "in").mkdir()
    with pytest.raises(UnsafeArchiveError, match="resolves outside the result"):
        get_source("ipfs")(source, tmp_path / "in" / "dest", node)
    assert os.listdir(tmp_path / "in") == []
