"""How the result server answers for one archive: opened safely (`O_NOFOLLOW`, one link, inside the storage
folder), its SHA-256 from the sidecar for `ETag` and digest headers, and its bytes through Starlette's
`FileResponse` reading the already-open descriptor (page-cache reads inline, disk reads in a thread)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import stat
import threading
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from starlette.responses import FileResponse
from starlette.types import Receive, Scope, Send

from .naming import SIDECAR_SUFFIX

__all__ = [
    "CHUNK",
    "ArchiveResponse",
    "Digests",
    "DownloadRegistry",
    "RangeNotSatisfiable",
    "archive_headers",
    "etag_matches",
    "open_archive",
    "parse_range",
    "read_chunk",
]

CHUNK = 256 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class RangeNotSatisfiable(Exception):
    """The Range header names no byte of the file (HTTP 416)."""


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte range (first, last) a `Range` header asks of a `size`-byte file.

    None when the header is to be ignored (not `bytes`, malformed, or several ranges: the whole file is
    sent); raises RangeNotSatisfiable when the one range holds no byte of the file.
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", spec)
    if match is None or not (match[1] or match[2]):
        return None
    try:
        first = int(match[1]) if match[1] else None
        last = int(match[2]) if match[2] else None
    except ValueError:  # more digits than int() accepts
        return None
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - last), size - 1
    if last is not None and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, size - 1 if last is None else min(last, size - 1)


class DownloadRegistry:
    """Names of the archives with a response in progress; retention skips them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[None]:
        """Mark `name` as being served for the duration of the block."""
        with self._lock:
            self._open[name] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[name] -= 1
                if not self._open[name]:
                    del self._open[name]

    def snapshot(self) -> frozenset[str]:
        """The names being served right now."""
        with self._lock:
            return frozenset(self._open)


class Digests:
    """SHA-256 per file version (device, inode, size, mtime): from the sidecar, else hashed once."""

    def __init__(self, capacity: int = 4096) -> None:
        self._cache: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()
        self._capacity = capacity

    async def get(self, dir_fd: int, name: str, fd: int, info: os.stat_result) -> str:
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        digest = _read_sidecar(dir_fd, name)
        if digest is None:
            digest = await anyio.to_thread.run_sync(_hash_fd, fd, info.st_size)
        self._cache[key] = digest
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return digest


def _read_sidecar(dir_fd: int, name: str) -> str | None:
    try:
        fd = os.open(name + SIDECAR_SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 512).decode("ascii", "replace").split()
    finally:
        os.close(fd)
    return text[0] if text and _HEX64.fullmatch(text[0]) else None


def _hash_fd(fd: int, size: int) -> str:
    sha = hashlib.sha256()
    offset = 0
    while offset < size and (data := os.pread(fd, 1 << 20, offset)):
        sha.update(data)
        offset += len(data)
    return sha.hexdigest()


async def read_chunk(fd: int, size: int, offset: int, scratch: bytearray | None = None) -> bytes:
    """Up to `size` bytes at `offset`: read inline when they are in the page cache (`RWF_NOWAIT`), else
    in a worker thread, so a slow disk never stalls the event loop. `scratch` is a reusable buffer."""
    view = memoryview(scratch if scratch is not None and len(scratch) >= size else bytearray(size))[:size]
    try:
        got = os.preadv(fd, [view], offset, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: the filesystem cannot say
        got = 0
    if got:
        return bytes(view[:got])
    return await anyio.to_thread.run_sync(os.pread, fd, size, offset)


def open_archive(storage: Path, name: str) -> tuple[int, int, os.stat_result] | None:
    """(dir fd, file fd, stat) of a top-level regular archive in `storage`, never through a symlink."""
    try:
        dir_fd = os.open(storage, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        os.close(dir_fd)
        return None
    try:
        info = os.fstat(fd)
        real = os.path.realpath(storage / name)
        same = os.stat(real, follow_symlinks=False)
        inside = os.path.dirname(real) == os.path.realpath(storage)
        if (
            inside
            and stat.S_ISREG(info.st_mode)
            and info.st_nlink == 1  # a hard link could alias a file outside the folder
            and (same.st_dev, same.st_ino) == (info.st_dev, info.st_ino)
        ):
            return dir_fd, fd, info
    except OSError:
        pass
    os.close(fd)
    os.close(dir_fd)
    return None


def etag_matches(header: str, etag: str) -> bool:
    """If-None-Match: `*` or any listed tag equal to `etag` under weak comparison."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


class _FdReader:
    """The async file Starlette's `FileResponse` reads, over the archive's already-open descriptor: reads
    come from the page cache inline and from disk in a worker thread (`read_chunk`), and a symlink swapped
    in after the open can never be followed, since no path is opened again."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0
        self.scratch = bytearray(CHUNK)

    async def seek(self, offset: int) -> None:
        self.offset = offset

    async def read(self, size: int) -> bytes:
        """Exactly `size` bytes, fewer only at the end of the file (Starlette takes a short read for EOF)."""
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:
            data = await read_chunk(self.fd, min(wanted, CHUNK), self.offset, self.scratch)
            if not data:
                break
            parts.append(data)
            self.offset += len(data)
            wanted -= len(data)
        return b"".join(parts) if len(parts) != 1 else parts[0]


class ArchiveResponse(FileResponse):
    """Starlette's `FileResponse` (HEAD, single and multiple ranges, `If-Range`, 416, disconnects) over an
    archive opened safely by `open_archive`; closes the descriptor when done and marks the download as in
    progress for retention."""

    chunk_size = CHUNK

    def __init__(
        self,
        fd: int,
        path: Path,
        info: os.stat_result,
        headers: Mapping[str, str],
        downloads: tuple[DownloadRegistry, str],
    ) -> None:
        super().__init__(path, headers=headers, media_type="application/gzip", stat_result=info)
        self.fd, self.downloads = fd, downloads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != "http.response.pathsend"}
        scope = {**scope, "extensions": extensions, "headers": _usable_range(scope, self.stat_result)}
        registry, name = self.downloads
        try:
            with registry.open(name):
                await super().__call__(scope, receive, send)
        finally:
            os.close(self.fd)

    @contextlib.asynccontextmanager
    async def _open_file(self) -> AsyncIterator[Any]:
        yield _FdReader(self.fd)


def _usable_range(scope: Scope, info: os.stat_result | None) -> list[tuple[bytes, bytes]]:
    """The request headers without a `Range` to be ignored (not `bytes`, malformed, a reversed range): the
    whole file is then sent, as RFC 9110 asks, where Starlette would answer 400."""
    headers: list[tuple[bytes, bytes]] = list(scope["headers"])
    size = info.st_size if info is not None else 0
    for raw_name, raw_value in headers:
        if raw_name.lower() != b"range":
            continue
        unit, _, spec = raw_value.decode("latin-1").partition("=")
        usable = unit.strip().lower() == "bytes" and bool(spec)
        for part in spec.split(",") if usable else []:
            # one unsatisfiable range: Starlette answers 416 or serves the others
            with contextlib.suppress(RangeNotSatisfiable):
                usable = parse_range(f"bytes={part}", size) is not None
            if not usable:
                break
        if not usable:
            return [(k, v) for k, v in headers if k.lower() != b"range"]
    return headers


def archive_headers(name: str, info: os.stat_result, digest: str) -> dict[str, str]:
    """The headers of every answer for an archive: its SHA-256 as ETag and digests, type, file name."""
    raw = base64.b64encode(bytes.fromhex(digest)).decode()
    return {
        "accept-ranges": "bytes",
        "etag": f'"{digest}"',
        "repr-digest": f"sha-256=:{raw}:",
        "digest": f"sha-256={raw}",
        "last-modified": formatdate(info.st_mtime, usegmt=True),
        "cache-control": "no-transform",
        "content-type": "application/gzip",
        "content-disposition": f'attachment; filename="{name}"',
    }
