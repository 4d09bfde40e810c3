"""Write a UnixFS DAG (from a verified CarStore) onto disk safely: folders, files, HAMT shards, symlinks.

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
from typing import BinaryIO

from ..errors import FetchError, UnsafeArchiveError
from .car import CarStore
from .cid import CID, DAG_PB, RAW
from .dagpb import DIRECTORY, FILE, HAMT_SHARD, SYMLINK, PBLink, UnixFSData, decode_node, decode_unixfs
from .dagpb import RAW as UNIXFS_RAW

__all__ = ["MAX_FOLDER_DEPTH", "export_dag", "show_entry", "symlink_problem"]

_MAX_FILE_DEPTH = 64
MAX_FOLDER_DEPTH = _MAX_FILE_DEPTH * 4
"""Folders nested deeper under the root than this are refused."""
_PERMISSIONS = 0o777  # never setuid, setgid or sticky


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


def show_entry(rel: str, target: bytes | None = None) -> str:
    """An entry for messages: `'outputs/host'`, or `'outputs/host' -> '/etc/hostname'` for a symlink."""
    return repr(rel) if target is None else f"{rel!r} -> {os.fsdecode(target)!r}"


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
        if data.mode is not None:
            os.chmod(out, data.mode & _PERMISSIONS)
        return
    if data.type not in (DIRECTORY, HAMT_SHARD):
        raise FetchError(f"{root} is neither a UnixFS folder nor a file")
    pending: list[tuple[Path, str, int, list[PBLink], UnixFSData]] = [(out, "", 0, links, data)]
    folder_modes: list[tuple[int, Path, int]] = []
    entries_left = max_entries
    while pending:
        folder, rel, depth, links, data = pending.pop()
        if depth > MAX_FOLDER_DEPTH:
            raise UnsafeArchiveError(f"the folders under {root} nest deeper than {MAX_FOLDER_DEPTH} levels")
        folder.mkdir()
        if depth and data.mode is not None:
            folder_modes.append((depth, folder, data.mode & _PERMISSIONS))
        seen: set[bytes] = set()
        for name, cid in reader.entries(links, data):
            entries_left -= 1
            if entries_left < 0:
                raise UnsafeArchiveError(f"the content under {root} has more than {max_entries} entries")
            plain = _safe_name(name, rel)
            path, child_rel = folder / plain, _join(rel, plain)
            if name in seen:
                raise UnsafeArchiveError(f"refusing duplicate entry {show_entry(child_rel)}")
            seen.add(name)
            child_links, child_data = reader.node(cid)
            if child_data.type in (DIRECTORY, HAMT_SHARD):
                pending.append((path, child_rel, depth + 1, child_links, child_data))
            elif child_data.type == SYMLINK:
                target = child_data.data or b""
                problem = symlink_problem(target, depth)
                if problem is not None:
                    raise UnsafeArchiveError(f"refusing symlink {show_entry(child_rel, target)}: {problem}")
                os.symlink(os.fsdecode(target), path)
            elif child_data.type in (FILE, UNIXFS_RAW):
                with open(path, "xb") as handle:
                    reader.write_file(handle, cid)
                if child_data.mode is not None:
                    os.chmod(path, child_data.mode & _PERMISSIONS)
            else:
                raise FetchError(f"{show_entry(child_rel)} has an unsupported UnixFS type {child_data.type}")
    _check_links_resolve_inside(out)
    _apply_folder_modes(folder_modes)
