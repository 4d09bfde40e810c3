"""A UnixFS importer in pure Python that yields the same CIDs as Kubo's `ipfs add` for the same flags.

It mirrors boxo (the library inside Kubo): fixed-size chunking, the balanced DAG layout, raw or dag-pb
leaves, CIDv0/v1 with sha2-256, basic directories, and HAMT-sharded directories (murmur3, fanout 256 by
default) once a directory's estimated size passes the threshold. `scan` (from `tree`) reads a folder's
shape, `import_tree` hashes it; `shape_cid` does the same with placeholder leaf hashes, without reading
file contents, which is enough to tell whether two sets of import settings build the same DAG.

With `preserve_mode` (`ipfs add --preserve-mode`), the UnixFS `mode` goes where Kubo 0.42 puts it: the
permission bits (07777) on each file's root node (only when not 0) and on each folder's node or root shard
(always); never on symlinks. Kubo turns raw leaves off for it, so every file root is a dag-pb node.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from .cid import CID, DAG_PB, RAW, encode_varint, sha256_cid
from .dagpb import DIRECTORY, FILE, SYMLINK, PBLink, UnixFSData, encode_node, encode_unixfs
from .hamt import build_hamt
from .tree import Entry, UnsupportedEntryError, scan

__all__ = [
    "PROFILES",
    "Entry",
    "FileBuilder",
    "ImportParams",
    "Link",
    "SizeEstimation",
    "UnsupportedEntryError",
    "build_directory",
    "build_tree",
    "cid_string",
    "entry_mode",
    "import_path",
    "import_tree",
    "iter_blocks",
    "scan",
    "shape_cid",
    "symlink_link",
]

SizeEstimation = Literal["links", "block", "disabled"]
Emit = Callable[[bytes, bytes], None]
"""Receives each block as (binary CID, block bytes)."""


@dataclass(frozen=True)
class ImportParams:
    """Everything that decides a UnixFS import's CIDs (Kubo's `ipfs add` flags and `Import.*` config)."""

    cid_version: Literal[0, 1] = 0
    raw_leaves: bool = False
    chunk_size: int = 262144
    max_file_links: int = 174
    max_directory_links: int = 0
    hamt_fanout: int = 256
    hamt_threshold: int = 262144
    size_estimation: SizeEstimation = "links"
    preserve_mode: bool = False

    def __post_init__(self) -> None:
        if self.preserve_mode and self.raw_leaves:
            raise ValueError("raw leaves cannot carry a mode: Kubo refuses raw-leaves with preserve-mode")
        if not 1 <= self.chunk_size <= 2096896:
            raise ValueError(f"chunk size must be 1..2096896 bytes, got {self.chunk_size}")
        if self.max_file_links < 2:
            raise ValueError("max_file_links must be at least 2")
        fanout = self.hamt_fanout
        if fanout < 8 or fanout > 1024 or fanout & (fanout - 1):
            raise ValueError("hamt_fanout must be a power of 2 between 8 and 1024")

    @property
    def chunker(self) -> str:
        """Kubo's chunker spelling, e.g. `size-1048576`."""
        return f"size-{self.chunk_size}"

    def with_modes(self) -> ImportParams:
        """These settings with modes preserved, and so without raw leaves (as Kubo's `--preserve-mode`)."""
        return replace(self, raw_leaves=False, preserve_mode=True)


PROFILES: dict[str, ImportParams] = {
    "unixfs-v1-2025": ImportParams(
        cid_version=1, raw_leaves=True, chunk_size=1048576, max_file_links=1024, size_estimation="block"
    ),
    "unixfs-v0-2015": ImportParams(),
}
"""Kubo's import profiles (`ipfs config profile apply ...`) by name."""


@dataclass(frozen=True, slots=True)
class Link:
    """A built DAG: its root's binary CID, cumulative block size (Tsize) and file bytes (files only)."""

    cid: bytes
    tsize: int
    filesize: int = 0


def cid_string(cid: bytes) -> str:
    """The usual string form of a binary CID (base58 for v0, base32 for v1)."""
    return str(CID.from_bytes(cid))


def _placeholder(codec: int, version: int) -> bytes:
    if version == 0 and codec == DAG_PB:
        return b"\x12\x20" + bytes(32)
    return b"\x01" + encode_varint(codec) + b"\x12\x20" + bytes(32)


class FileBuilder:
    """Chunk a file's bytes and build its balanced DAG incrementally (boxo's `balanced.Layout`).

    `mode` goes into the root node, so the node built last is emitted only once the next one exists
    (or, re-encoded with the mode, by `finish`): the node without the mode never reaches `emit`.
    """

    def __init__(self, params: ImportParams, emit: Emit | None = None, mode: int | None = None) -> None:
        self._params = params
        self._emit = emit
        self._mode = mode
        self._levels: list[list[Link]] = [[]]
        self._pending = bytearray()
        self._last: tuple[Link, bytes | None, Callable[[int], Link] | None] | None = None

    def write(self, data: bytes | memoryview) -> None:
        """Feed the next bytes of the file, in any piece sizes (a view may be reused once this returns:
        nothing keeps it)."""
        size = self._params.chunk_size
        if not self._pending and len(data) == size:
            self._push(0, self._leaf(data))
            return
        self._pending += data
        while len(self._pending) >= size:
            self._push(0, self._leaf(bytes(self._pending[:size])))
            del self._pending[:size]

    def write_shape(self, size: int) -> None:
        """Account for `size` bytes with placeholder leaves (same DAG shape, no content)."""
        if self._pending:
            raise ValueError("write_shape cannot follow a partial write")
        full, rest = divmod(size, self._params.chunk_size)
        for length in [self._params.chunk_size] * full + ([rest] if rest else []):
            self._push(0, self._shape_leaf(length))

    def finish(self) -> Link:
        """The file's root link (a lone leaf, or the balanced tree above the leaves), with the mode."""
        if self._pending:
            self._push(0, self._leaf(bytes(self._pending)))
            self._pending.clear()
        levels = self._levels
        top = max((i for i, level in enumerate(levels) if level), default=-1)
        if top < 0:
            root = self._leaf(b"")
        else:
            for depth in range(top):
                if levels[depth]:
                    levels[depth + 1].append(self._internal(levels[depth]))
                    levels[depth] = []
            root = levels[top][0] if len(levels[top]) == 1 else self._internal(levels[top])
        last, self._last = self._last, None  # the root is always the node built last
        if last is not None and last[0] is root and last[2] is not None and self._mode is not None:
            root = last[2](self._mode)
            last, self._last = self._last, None
        self._release(last)
        return root

    def _push(self, depth: int, link: Link) -> None:
        level = self._levels[depth]
        level.append(link)
        if len(level) == self._params.max_file_links:
            if depth + 1 == len(self._levels):
                self._levels.append([])
            node = self._internal(level)
            self._levels[depth] = []
            self._push(depth + 1, node)

    def _built(self, link: Link, block: bytes | None, with_mode: Callable[[int], Link] | None) -> Link:
        """Hold a new node back from `emit` and release the one before it (which cannot be the root)."""
        self._release(self._last)
        self._last = (link, block, with_mode)
        return link

    def _release(self, node: tuple[Link, bytes | None, object] | None) -> None:
        if node is not None and node[1] is not None and self._emit is not None:
            self._emit(node[0].cid, node[1])

    def _node(self, children: Sequence[Link], data: UnixFSData) -> Link:
        block = encode_node([PBLink(c.cid, b"", c.tsize) for c in children], encode_unixfs(data))
        cid = sha256_cid(block, DAG_PB, self._params.cid_version)
        link = Link(cid, len(block) + sum(c.tsize for c in children), data.filesize or 0)
        return self._built(link, block, lambda mode: self._node(children, replace(data, mode=mode)))

    def _leaf(self, chunk: bytes | memoryview) -> Link:
        if self._params.raw_leaves:  # a raw root carries no mode (boxo leaves it out)
            link = Link(sha256_cid(chunk, RAW, 1), len(chunk), len(chunk))
            return self._built(link, bytes(chunk) if self._emit is not None else None, None)
        return self._node([], UnixFSData(FILE, bytes(chunk) or None, len(chunk)))

    def _shape_leaf(self, length: int) -> Link:
        if self._params.raw_leaves:
            return Link(_placeholder(RAW, 1), length, length)
        size = len(encode_varint(length))
        inner = 2 + 1 + size + length + 1 + size
        block_size = 1 + len(encode_varint(inner)) + inner
        link = Link(_placeholder(DAG_PB, self._params.cid_version), block_size, length)
        return self._built(
            link, None, lambda mode: self._node([], UnixFSData(FILE, bytes(length), length, mode=mode))
        )

    def _internal(self, children: Sequence[Link]) -> Link:
        filesize = sum(child.filesize for child in children)
        return self._node(children, UnixFSData(FILE, None, filesize, tuple(c.filesize for c in children)))


def symlink_link(target: bytes, params: ImportParams, emit: Emit | None = None) -> Link:
    """The UnixFS symlink node for `target` (never with a mode: Kubo stores none for symlinks)."""
    block = encode_node([], encode_unixfs(UnixFSData(SYMLINK, target)))
    cid = sha256_cid(block, DAG_PB, params.cid_version)
    if emit is not None:
        emit(cid, block)
    return Link(cid, len(block))


def _needs_hamt(links: Sequence[PBLink], data: bytes, params: ImportParams) -> bool:
    """boxo's Basic→HAMT switch for a directory holding `links` (sizes only grow while importing)."""
    if params.hamt_threshold == 0:
        return False
    too_many = 0 < params.max_directory_links < len(links)
    if params.size_estimation == "disabled":
        return too_many
    if params.size_estimation == "block":
        size = len(encode_node(links, data))
    else:
        size = sum(len(link.name) + len(link.cid) for link in links)
    return too_many or size > params.hamt_threshold


def build_directory(
    entries: Sequence[tuple[bytes, Link]],
    params: ImportParams,
    emit: Emit | None = None,
    mode: int | None = None,
) -> Link:
    """A directory over (name, link) entries: one basic node, or a HAMT when Kubo would shard it."""
    links = sorted((PBLink(link.cid, name, link.tsize) for name, link in entries), key=lambda lk: lk.name)
    data = encode_unixfs(UnixFSData(DIRECTORY, mode=mode))
    if _needs_hamt(links, data, params):
        return Link(*build_hamt(links, params.hamt_fanout, params.cid_version, emit, mode))
    block = encode_node(links, data)
    cid = sha256_cid(block, DAG_PB, params.cid_version)
    if emit is not None:
        emit(cid, block)
    return Link(cid, len(block) + sum(link.tsize for link in links))


def entry_mode(entry: Entry, params: ImportParams) -> int | None:
    """The UnixFS mode Kubo stores for `entry`: none without `preserve_mode`, for symlinks, or for a file
    whose permission bits are all 0; a folder's always (even 0: its Go mode has the directory bit set)."""
    if not params.preserve_mode or entry.kind == "symlink":
        return None
    if entry.kind == "file":
        return entry.mode or None
    return entry.mode


def build_tree(
    root: Entry, params: ImportParams, file_link: Callable[[Entry], Link], emit: Emit | None = None
) -> Link:
    """The DAG of a scanned tree; `file_link` supplies each file's link (hashed, recorded or shaped)."""

    def visit(entry: Entry) -> Link:
        if entry.kind == "dir":
            children = [(child.name, visit(child)) for child in entry.children]
            return build_directory(children, params, emit, entry_mode(entry, params))
        if entry.kind == "symlink":
            return symlink_link(entry.target, params, emit)
        return file_link(entry)

    return visit(root)


def iter_blocks(
    root: Entry, params: ImportParams, read: Callable[[int], object] | None = None
) -> Generator[tuple[bytes, bytes], None, Link]:
    """Read and import a scanned tree, yielding each block as (binary CID, bytes); returns the root link.

    Blocks come out as soon as they are built (a file's leaves while it is read), so memory stays flat.
    `read(nbytes)` is called for every piece of file content read.
    """
    ready: list[tuple[bytes, bytes]] = []

    def emit(cid: bytes, block: bytes) -> None:
        ready.append((cid, block))

    def drain() -> Iterator[tuple[bytes, bytes]]:
        yield from ready
        ready.clear()

    def visit(entry: Entry) -> Generator[tuple[bytes, bytes], None, Link]:
        if entry.kind == "dir":
            children = []
            for child in entry.children:
                children.append((child.name, (yield from visit(child))))
            link = build_directory(children, params, emit, entry_mode(entry, params))
        elif entry.kind == "symlink":
            link = symlink_link(entry.target, params, emit)
        else:
            builder = FileBuilder(params, emit, entry_mode(entry, params))
            with open(entry.path, "rb") as handle:
                while chunk := handle.read(params.chunk_size):
                    builder.write(chunk)
                    if read is not None:
                        read(len(chunk))
                    yield from drain()
            link = builder.finish()
        yield from drain()
        return link

    return (yield from visit(root))


def import_tree(root: Entry, params: ImportParams, emit: Emit | None = None) -> Link:
    """Read and import a scanned tree; `emit` receives every block (files first, then their folders)."""
    blocks = iter_blocks(root, params)
    while True:
        try:
            cid, block = next(blocks)
        except StopIteration as done:
            link: Link = done.value
            return link
        if emit is not None:
            emit(cid, block)


def shape_cid(root: Entry, params: ImportParams) -> bytes:
    """Root CID of the tree built with placeholder leaf hashes: equal for two params iff the DAGs match."""

    def shaped(entry: Entry) -> Link:
        builder = FileBuilder(params, mode=entry_mode(entry, params))
        builder.write_shape(entry.size)
        return builder.finish()

    return build_tree(root, params, shaped).cid


def import_path(path: Path, params: ImportParams) -> str:
    """The root CID Kubo's `ipfs add -r` (hidden files included) gives `path` with these params
    (with `preserve_mode`: `ipfs add -r --preserve-mode`)."""
    return cid_string(import_tree(scan(path), params).cid)
