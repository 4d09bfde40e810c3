"""Write a UnixFS DAG (from verified blocks) onto disk safely: folders, files, HAMT shards, symlinks.

Every block must be present (the DAG is complete from the root) and every name must be a plain file name:
no `..`, no `/`, no empty or duplicate names; symlinks must stay inside the tree (`symlink_problem`, which
the IPFS publisher applies too). Refusals name the entry by its path inside the result, never by where it
is being written. A node's UnixFS `mode` is applied as permission bits only (0o777), to files once written
and to folders once everything is written (a read-only folder can still be filled); the top folder is the
caller's destination and keeps its mode (a folder without write permission could not be moved into place).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from ..errors import FetchError, UnsafeArchiveError
from ..slicedwrite import write_sliced
from .cid import CID, DAG_PB, RAW
from .dagpb import DIRECTORY, FILE, HAMT_SHARD, SYMLINK, PBLink, UnixFSData, decode_node, decode_unixfs
from .dagpb import RAW as UNIXFS_RAW

__all__ = ["MAX_FOLDER_DEPTH", "BlockSource", "export_dag", "show_entry", "symlink_problem"]

_MAX_FILE_DEPTH = 64
MAX_FOLDER_DEPTH = _MAX_FILE_DEPTH * 4
"""Folders nested deeper under the root than this are refused."""
_PERMISSIONS = 0o777  # never setuid, setgid or sticky
_RAW_LEAF = UnixFSData(UNIXFS_RAW)


class BlockSource(Protocol):
    """Where blocks come from: a verified CarStore (any order) or an OrderedCar (depth-first, as walked)."""

    def get(self, cid: CID) -> bytes | memoryview | None: ...


class _Node(NamedTuple):
    links: list[PBLink]
    data: UnixFSData
    raw: bytes | memoryview | None  # the block of a raw leaf (its bytes are the file's)


class _Reader:
    """Decodes blocks of one DAG, naming the root in every error; each block is asked for once, when the
    depth-first walk of the links reaches it (the order an `OrderedCar` needs)."""

    def __init__(self, store: BlockSource, root: CID, max_bytes: int) -> None:
        self.store = store
        self.root = root
        self.bytes_left = max_bytes
        self.max_bytes = max_bytes

    def _emit(self, out: BinaryIO, data: bytes | memoryview) -> None:
        """Write file bytes, refusing a DAG that expands past the byte cap (blocks can be linked many times)."""
        self.bytes_left -= len(data)
        if self.bytes_left < 0:
            raise UnsafeArchiveError(
                f"the content under {self.root} expands to more than {self.max_bytes} bytes"
            )
        write_sliced(out, data)

    def block(self, cid: CID) -> bytes | memoryview:
        data = self.store.get(cid)
        if data is None:
            raise FetchError(f"the DAG under {self.root} is incomplete: block {cid} is missing")
        return data

    def node(self, cid: CID) -> _Node:
        """Links and UnixFS data of a dag-pb node (a raw block reads as a raw UnixFS leaf)."""
        if cid.codec == RAW:
            return _Node([], _RAW_LEAF, self.block(cid))
        if cid.codec != DAG_PB:
            raise FetchError(f"{cid} under {self.root} is not UnixFS (codec 0x{cid.codec:x})")
        try:
            links, data = decode_node(bytes(self.block(cid)))
            if data is None:
                raise ValueError("no UnixFS data")
            return _Node(links, decode_unixfs(data), None)
        except ValueError as exc:
            raise FetchError(f"{cid} under {self.root} is not a valid UnixFS node: {exc}") from None

    @staticmethod
    def child(link: PBLink) -> CID:
        try:
            return CID.from_bytes(link.cid)
        except ValueError as exc:
            raise FetchError(f"malformed link {link.name!r}: {exc}") from None

    def entries(self, node: _Node) -> Iterator[tuple[bytes, CID]]:
        """(name, CID) of each entry of a basic or HAMT-sharded directory, in link order, depth first: a
        sub-shard is read when reached, after the entries before it (and what they hold) are done."""
        if node.data.type == DIRECTORY:
            for entry in node.links:
                yield entry.name, self.child(entry)
            return
        fanout = node.data.fanout or 0
        if fanout < 2 or fanout & (fanout - 1):
            raise FetchError(f"HAMT shard under {self.root} has an invalid fanout {fanout}")
        pad = len(f"{fanout - 1:X}")
        shards = [iter(node.links)]
        while shards:
            link = next(shards[-1], None)
            if link is None:
                shards.pop()
            elif len(link.name) == pad:
                child = self.child(link)
                sub = self.node(child)
                if sub.data.type != HAMT_SHARD or sub.data.fanout != fanout or len(shards) > 64:
                    raise FetchError(f"malformed HAMT shard {child} under {self.root}")
                shards.append(iter(sub.links))
            elif len(link.name) > pad:
                yield link.name[pad:], self.child(link)
            else:
                raise FetchError(f"malformed HAMT link name {link.name!r} under {self.root}")

    def write_file(self, out: BinaryIO, cid: CID, node: _Node, depth: int = 0) -> int:
        """Append the file bytes of `node` (the block of `cid`) to `out`; returns how many were written."""
        if depth > _MAX_FILE_DEPTH:
            raise FetchError(f"file DAG under {self.root} is too deep")
        if node.raw is not None:
            self._emit(out, node.raw)
            return len(node.raw)
        data = node.data
        if data.type not in (FILE, UNIXFS_RAW):
            raise FetchError(f"{cid} under {self.root} is not file data")
        if data.blocksizes and len(data.blocksizes) != len(node.links):
            raise FetchError(f"file node {cid} under {self.root} has inconsistent block sizes")
        written = 0
        if data.data:
            self._emit(out, data.data)
            written += len(data.data)
        for index, link in enumerate(node.links):
            child = self.child(link)
            size = self.write_file(out, child, self.node(child), depth + 1)
            if data.blocksizes and size != data.blocksizes[index]:
                raise FetchError(f"file node {cid} under {self.root} records a wrong block size")
            written += size
        if data.filesize is not None and data.type == FILE and written != data.filesize:
            raise FetchError(
                f"file {cid} under {self.root} holds {written} bytes, its header says {data.filesize}"
            )
        return written


def show_entry(rel: str, target: bytes | None = None) -> str:
    """An entry for messages: `'outputs/host'`, or `'outputs/host' -> '/etc/hostname'` for a symlink."""
    return repr(rel) if target is None else f"{rel!r} -> {os.fsdecode(target)!r}"


class _Folder(NamedTuple):
    path: Path
    rel: str
    depth: int
    entries: Iterator[tuple[bytes, CID]]
    seen: set[bytes]


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _safe_name(name: bytes, rel: str) -> str:
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        where = f"folder {rel!r}" if rel else "the top folder"
        raise UnsafeArchiveError(f"refusing entry name {name!r} in {where}: not a plain file name")
    return os.fsdecode(name)


def symlink_problem(target: bytes, depth: int) -> str | None:
    """Why a symlink `depth` folders below the root, pointing to `target`, would leave the tree (or None)."""
    if not target or target.startswith(b"/") or b"\0" in target:
        return "its target is absolute or empty"
    level = depth
    for part in target.split(b"/"):
        if part == b"..":
            level -= 1
            if level < 0:
                return "its target climbs out of the result"
        elif part not in (b"", b"."):
            level += 1
    return None


def _check_links_resolve_inside(out: Path) -> None:
    """Refuse symlinks that, followed through the tree's other symlinks, land outside `out`."""
    top = os.path.realpath(out)
    for folder, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                resolved = os.path.realpath(path)
                if os.path.commonpath([top, resolved]) != top:
                    shown = show_entry(os.path.relpath(path, out), os.fsencode(os.readlink(path)))
                    raise UnsafeArchiveError(f"refusing symlink {shown}: it resolves outside the result")


def _apply_folder_modes(modes: Sequence[tuple[int, Path, int]]) -> None:
    """chmod folders deepest first, so no folder is closed before the ones below it are done."""
    for _depth, path, mode in sorted(modes, key=lambda item: -item[0]):
        os.chmod(path, mode)


def export_dag(
    store: BlockSource,
    root: CID,
    out: Path,
    *,
    max_bytes: int = 100 * 2**30,
    max_entries: int = 1_000_000,
) -> None:
    """Write the DAG under `root` at `out` (which must not exist): a folder, or one file.

    Walks the links depth first, in order, asking `store` for each block once as it is reached. Caps the
    bytes written and the entries created (a DAG can link one block or folder many times, so a small CAR
    can expand without bound), and refuses symlinks that resolve outside `out`.
    """
    reader = _Reader(store, root, max_bytes)
    top = reader.node(root)
    if top.data.type in (FILE, UNIXFS_RAW):
        with open(out, "xb") as handle:
            reader.write_file(handle, root, top)
        if top.data.mode is not None:
            os.chmod(out, top.data.mode & _PERMISSIONS)
        return
    if top.data.type not in (DIRECTORY, HAMT_SHARD):
        raise FetchError(f"{root} is neither a UnixFS folder nor a file")
    out.mkdir()
    folders = [_Folder(out, "", 0, reader.entries(top), set())]
    folder_modes: list[tuple[int, Path, int]] = []
    entries_left = max_entries
    while folders:
        folder = folders[-1]
        entry = next(folder.entries, None)
        if entry is None:
            folders.pop()
            continue
        name, cid = entry
        entries_left -= 1
        if entries_left < 0:
            raise UnsafeArchiveError(f"the content under {root} has more than {max_entries} entries")
        plain = _safe_name(name, folder.rel)
        path, child_rel = folder.path / plain, _join(folder.rel, plain)
        if name in folder.seen:
            raise UnsafeArchiveError(f"refusing duplicate entry {show_entry(child_rel)}")
        folder.seen.add(name)
        child = reader.node(cid)
        kind, mode = child.data.type, child.data.mode
        if kind in (DIRECTORY, HAMT_SHARD):
            depth = folder.depth + 1
            if depth > MAX_FOLDER_DEPTH:
                raise UnsafeArchiveError(
                    f"the folders under {root} nest deeper than {MAX_FOLDER_DEPTH} levels"
                )
            path.mkdir()
            if mode is not None:
                folder_modes.append((depth, path, mode & _PERMISSIONS))
            folders.append(_Folder(path, child_rel, depth, reader.entries(child), set()))
        elif kind == SYMLINK:
            target = child.data.data or b""
            problem = symlink_problem(target, folder.depth)
            if problem is not None:
                raise UnsafeArchiveError(f"refusing symlink {show_entry(child_rel, target)}: {problem}")
            os.symlink(os.fsdecode(target), path)
        elif kind in (FILE, UNIXFS_RAW):
            with open(path, "xb") as handle:
                reader.write_file(handle, cid, child)
            if mode is not None:
                os.chmod(path, mode & _PERMISSIONS)
        else:
            raise FetchError(f"{show_entry(child_rel)} has an unsupported UnixFS type {kind}")
    _check_links_resolve_inside(out)
    _apply_folder_modes(folder_modes)
