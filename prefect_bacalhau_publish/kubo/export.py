"""Write a UnixFS DAG (from a verified CarStore) onto disk safely: folders, files, HAMT shards, symlinks.

Every block must be present (the DAG is complete from the root) and every name must be a plain file name:
no `..`, no `/`, no empty or duplicate names; symlinks must stay inside the tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import FetchError, UnsafeArchiveError
from .car import CarStore
from .cid import CID, DAG_PB, RAW
from .dagpb import DIRECTORY, FILE, HAMT_SHARD, SYMLINK, PBLink, UnixFSData, decode_node, decode_unixfs
from .dagpb import RAW as UNIXFS_RAW

__all__ = ["export_dag"]

_MAX_FILE_DEPTH = 64


class _Reader:
    """Decodes blocks of one DAG, naming the root in every error."""

    def __init__(self, store: CarStore, root: CID, max_bytes: int) -> None:
        self.store = store
        self.root = root
        self.bytes_left = max_bytes
        self.max_bytes = max_bytes

    def _emit(self, out: BinaryIO, data: bytes) -> None:
        """Write file bytes, refusing a DAG that expands past the byte cap (blocks can be linked many times)."""
        self.bytes_left -= len(data)
        if self.bytes_left < 0:
            raise UnsafeArchiveError(
                f"the content under {self.root} expands to more than {self.max_bytes} bytes"
            )
        out.write(data)

    def block(self, cid: CID) -> bytes:
        data = self.store.get(cid)
        if data is None:
            raise FetchError(f"the DAG under {self.root} is incomplete: block {cid} is missing")
        return data

    def node(self, cid: CID) -> tuple[list[PBLink], UnixFSData]:
        """Links and UnixFS data of a dag-pb node (a raw block reads as a raw UnixFS leaf)."""
        if cid.codec == RAW:
            return [], UnixFSData(UNIXFS_RAW, self.block(cid))
        if cid.codec != DAG_PB:
            raise FetchError(f"{cid} under {self.root} is not UnixFS (codec 0x{cid.codec:x})")
        try:
            links, data = decode_node(self.block(cid))
            if data is None:
                raise ValueError("no UnixFS data")
            return links, decode_unixfs(data)
        except ValueError as exc:
            raise FetchError(f"{cid} under {self.root} is not a valid UnixFS node: {exc}") from None

    @staticmethod
    def child(link: PBLink) -> CID:
        try:
            return CID.from_bytes(link.cid)
        except ValueError as exc:
            raise FetchError(f"malformed link {link.name!r}: {exc}") from None

    def entries(self, links: list[PBLink], data: UnixFSData) -> Iterator[tuple[bytes, CID]]:
        """(name, CID) of each entry of a basic or HAMT-sharded directory."""
        if data.type == DIRECTORY:
            for link in links:
                yield link.name, self.child(link)
            return
        fanout = data.fanout or 0
        if fanout < 2 or fanout & (fanout - 1):
            raise FetchError(f"HAMT shard under {self.root} has an invalid fanout {fanout}")
        pad = len(f"{fanout - 1:X}")
        pending = [(links, 0)]
        while pending:
            shard_links, depth = pending.pop()
            for link in shard_links:
                if len(link.name) == pad:
                    child = self.child(link)
                    sub_links, sub_data = self.node(child)
                    if sub_data.type != HAMT_SHARD or sub_data.fanout != fanout or depth > 64:
                        raise FetchError(f"malformed HAMT shard {child} under {self.root}")
                    pending.append((sub_links, depth + 1))
                elif len(link.name) > pad:
                    yield link.name[pad:], self.child(link)
                else:
                    raise FetchError(f"malformed HAMT link name {link.name!r} under {self.root}")

    def write_file(self, out: BinaryIO, cid: CID, depth: int = 0) -> int:
        """Append the file bytes under `cid` to `out`; returns how many were written."""
        if depth > _MAX_FILE_DEPTH:
            raise FetchError(f"file DAG under {self.root} is too deep")
        links, data = self.node(cid)
        if data.type not in (FILE, UNIXFS_RAW):
            raise FetchError(f"{cid} under {self.root} is not file data")
        if data.blocksizes and len(data.blocksizes) != len(links):
            raise FetchError(f"file node {cid} under {self.root} has inconsistent block sizes")
        written = 0
        if data.data:
            self._emit(out, data.data)
            written += len(data.data)
        for index, link in enumerate(links):
            size = self.write_file(out, self.child(link), depth + 1)
            if data.blocksizes and size != data.blocksizes[index]:
                raise FetchError(f"file node {cid} under {self.root} records a wrong block size")
            written += size
        if data.filesize is not None and data.type == FILE and written != data.filesize:
            raise FetchError(
                f"file {cid} under {self.root} holds {written} bytes, its header says {data.filesize}"
            )
        return written


def _safe_name(name: bytes, where: Path) -> str:
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafeArchiveError(f"refusing entry name {name!r} in {where}: not a plain file name")
    return os.fsdecode(name)


def _check_symlink(target: bytes, depth: int, where: Path) -> None:
    """Refuse a symlink target that is absolute or climbs out of the fetched tree."""
    if not target or target.startswith(b"/") or b"\0" in target:
        raise UnsafeArchiveError(f"refusing symlink {where} -> {target!r}: absolute or empty target")
    level = depth
    for part in target.split(b"/"):
        if part == b"..":
            level -= 1
            if level < 0:
                raise UnsafeArchiveError(
                    f"refusing symlink {where} -> {target!r}: it points outside the result"
                )
        elif part not in (b"", b"."):
            level += 1


def _check_links_resolve_inside(out: Path) -> None:
    """Refuse symlinks that, followed through the tree's other symlinks, land outside `out`."""
    top = os.path.realpath(out)
    for folder, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                resolved = os.path.realpath(path)
                if os.path.commonpath([top, resolved]) != top:
                    raise UnsafeArchiveError(
                        f"refusing symlink {path} -> {os.readlink(path)!r}: it resolves outside the result"
                    )


def export_dag(
    store: CarStore, root: CID, out: Path, *, max_bytes: int = 100 * 2**30, max_entries: int = 1_000_000
) -> None:
    """Write the DAG under `root` at `out` (which must not exist): a folder, or one file.

    Caps the bytes written and the entries created (a DAG can link one block or folder many times, so a
    small CAR can expand without bound), and refuses symlinks that resolve outside `out`.
    """
    reader = _Reader(store, root, max_bytes)
    links, data = reader.node(root)
    if data.type in (FILE, UNIXFS_RAW):
        with open(out, "xb") as handle:
            reader.write_file(handle, root)
        return
    if data.type not in (DIRECTORY, HAMT_SHARD):
        raise FetchError(f"{root} is neither a UnixFS folder nor a file")
    pending: list[tuple[Path, int, list[PBLink], UnixFSData]] = [(out, 0, links, data)]
    entries_left = max_entries
    while pending:
        folder, depth, links, data = pending.pop()
        if depth > _MAX_FILE_DEPTH * 4:
            raise UnsafeArchiveError(
                f"the folders under {root} nest deeper than {_MAX_FILE_DEPTH * 4} levels"
            )
        folder.mkdir()
        seen: set[bytes] = set()
        for name, cid in reader.entries(links, data):
            entries_left -= 1
            if entries_left < 0:
                raise UnsafeArchiveError(f"the content under {root} has more than {max_entries} entries")
            path = folder / _safe_name(name, folder)
            if name in seen:
                raise UnsafeArchiveError(f"refusing duplicate entry {path}")
            seen.add(name)
            child_links, child_data = reader.node(cid)
            if child_data.type in (DIRECTORY, HAMT_SHARD):
                pending.append((path, depth + 1, child_links, child_data))
            elif child_data.type == SYMLINK:
                target = child_data.data or b""
                _check_symlink(target, depth, path)
                os.symlink(os.fsdecode(target), path)
            elif child_data.type in (FILE, UNIXFS_RAW):
                with open(path, "xb") as handle:
                    reader.write_file(handle, cid)
            else:
                raise FetchError(f"{path} has an unsupported UnixFS type {child_data.type}")
    _check_links_resolve_inside(out)
