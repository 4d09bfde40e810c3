"""The writer: deterministic, streaming tar.gz archives of result folders (`write_archive`).

The archives are PAX-format tar inside one gzip member (header: no file name, mtime 0). Output is
byte-identical for the same folder, level and compressor; ISA-L and zlib produce different (equally
valid) bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from prefect_bacalhau_publish.errors import PublishError
from prefect_bacalhau_publish.progress import advance

from ..slicedwrite import SLICE
from .checks import _kind, _link_problem
from .codec import CHUNK, DEFAULT_COMPRESSOR, Compressor, _Deflater, _deflater

_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class ArchiveInfo:
    """What `write_archive` wrote: SHA-256 and size of the compressed bytes, regular files, content bytes."""

    sha256: str
    size: int
    files: int
    bytes_in: int


@dataclass(frozen=True)
class _Entry:
    rel: str  # relative POSIX path, no trailing slash
    type: bytes  # tarfile.DIRTYPE, REGTYPE or SYMTYPE
    mode: int
    size: int = 0
    target: str = ""


def _scan(root: str) -> list[_Entry]:
    """Every entry under ``root``, sorted bytewise by relative path; symlinks are checked, not followed."""
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise PublishError(f"{root} is not a folder")
    except OSError as exc:
        raise PublishError(f"cannot read result folder {root}: {exc}") from None
    entries: list[_Entry] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(os.path.join(root, rel_dir)) as it:
                items = list(it)
        except OSError as exc:
            raise PublishError(f"cannot list {os.path.join(root, rel_dir)}: {exc}") from None
        for item in items:
            rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
            try:
                st = item.stat(follow_symlinks=False)
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    entries.append(_Entry(rel, tarfile.DIRTYPE, 0o755))
                    pending.append(rel)
                elif stat.S_ISREG(mode):
                    entries.append(_Entry(rel, tarfile.REGTYPE, 0o755 if mode & 0o111 else 0o644, st.st_size))
                elif stat.S_ISLNK(mode):
                    entries.append(_Entry(rel, tarfile.SYMTYPE, 0o777, target=os.readlink(item.path)))
                else:
                    raise PublishError(
                        f"{rel!r} in the result folder is {_kind(mode)}; only files, folders and symlinks "
                        "are archived"
                    )
            except OSError as exc:
                raise PublishError(f"cannot read {item.path}: {exc}") from None
    entries.sort(key=lambda e: os.fsencode(e.rel))
    links = {e.rel: e.target for e in entries if e.type == tarfile.SYMTYPE}
    for rel, target in links.items():
        problem = _link_problem(links, rel, target)
        if problem:
            raise PublishError(f"symlink {rel!r} in the result folder {problem}; refusing to archive it")
    return entries


def _header(entry: _Entry) -> bytes:
    info = tarfile.TarInfo(entry.rel)
    info.type = entry.type
    info.mode = entry.mode
    info.size = entry.size
    info.linkname = entry.target
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _GzipSink:
    """Takes the tar stream and compresses, hashes and writes it in fixed CHUNK-sized pieces, so the output
    never depends on how reads happened to split. (A compressor thread was measured: no gain with ISA-L,
    about 5% with zlib, on 2 cores — not worth the complexity.)"""

    def __init__(self, out: BinaryIO, deflater: _Deflater, *, digest: bool = True) -> None:
        self.offset = 0  # tar bytes taken
        self.size = 0  # compressed bytes written
        self._out = out
        self._deflater = deflater
        self._sha = hashlib.sha256() if digest else None
        self._view = memoryview(bytearray(CHUNK))
        self._fill = 0

    def write(self, data: bytes) -> None:
        """Append ``data`` to the tar stream."""
        view = memoryview(data)
        while view:
            if self._fill == CHUNK:
                self._spill()
            n = min(len(view), CHUNK - self._fill)
            self._view[self._fill : self._fill + n] = view[:n]
            self._fill += n
            self.offset += n
            view = view[n:]

    def read_from(self, fd: int, size: int, path: str) -> int:
        """Append up to ``size`` bytes read from ``fd`` (straight into the chunk buffer); return the count.

        Each read is reported to `progress.advance`: a publish's progress is the result folder's bytes read.
        """
        done = 0
        while done < size:
            if self._fill == CHUNK:
                self._spill()
            want = min(size - done, CHUNK - self._fill)
            try:
                n = os.readv(fd, [self._view[self._fill : self._fill + want]])
            except OSError as exc:
                raise PublishError(f"cannot read {path}: {exc}") from None
            if n == 0:
                break
            self._fill += n
            self.offset += n
            done += n
            advance(n)
        return done

    def finish(self) -> str:
        """Compress what is left, write the gzip trailer, and return the SHA-256 of all bytes written."""
        self._spill()
        self._emit(self._deflater.flush())
        return self._sha.hexdigest() if self._sha is not None else ""

    def _spill(self) -> None:
        self._emit(self._deflater.compress(self._view[: self._fill]))
        self._fill = 0

    def _emit(self, data: bytes) -> None:
        if self._sha is not None:
            self._sha.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            n = self._out.write(view[:SLICE])  # see slicedwrite
            if n is None:  # a non-blocking raw stream that would block
                raise BlockingIOError("output stream would block")
            view = view[n:]


def _copy_file(root: str, entry: _Entry, sink: _GzipSink) -> None:
    path = os.path.join(root, entry.rel)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PublishError(f"cannot read {path}: {exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PublishError(f"{path} is no longer a regular file; it changed while being archived")
        if sink.read_from(fd, entry.size, path) != entry.size or os.read(fd, 1):
            raise PublishError(f"{path} changed size while being archived")
    finally:
        os.close(fd)
    sink.write(bytes(-entry.size % _BLOCK))


def write_archive(
    src_dir: Path,
    out: BinaryIO,
    *,
    level: int = 1,
    compressor: Compressor | None = None,
    digest: bool = True,
) -> ArchiveInfo:
    """Stream a deterministic tar.gz of everything under ``src_dir`` into ``out``; return its digest.

    Entries are relative, sorted bytewise, with uid/gid 0, empty owner names, mtime 0 and modes 0o644 /
    0o755, so the same content always gives the same bytes. ``out`` is only written to (never seeked),
    and memory stays flat whatever the folder's size. ``compressor`` defaults to `DEFAULT_COMPRESSOR`.
    With ``digest=False`` the SHA-256 is not computed (for callers that hash the bytes themselves) and
    the returned ``sha256`` is empty.

    Raises PublishError naming the path for sockets, FIFOs, devices, symlinks that are absolute or lead
    outside ``src_dir``, unreadable files, and files that change while being read; errors raised by
    ``out`` itself propagate unchanged. Nothing is written when the folder fails the scan.
    """
    deflater = _deflater(compressor or DEFAULT_COMPRESSOR, level)
    root = os.fspath(src_dir)
    entries = _scan(root)
    sink = _GzipSink(out, deflater, digest=digest)
    files = bytes_in = 0
    for entry in entries:
        sink.write(_header(entry))
        if entry.type == tarfile.REGTYPE:
            _copy_file(root, entry, sink)
            files += 1
            bytes_in += entry.size
    sink.write(bytes(2 * _BLOCK))  # end-of-archive marker
    sink.write(bytes(-sink.offset % _RECORD))  # pad the last record, as tar does
    return ArchiveInfo(sha256=sink.finish(), size=sink.size, files=files, bytes_in=bytes_in)


class _NullSink:
    def write(self, data: bytes | memoryview) -> int:
        return len(data)


def archive_digest(src_dir: Path, *, level: int = 1, compressor: Compressor | None = None) -> ArchiveInfo:
    """What `write_archive` would return for ``src_dir``, without keeping the bytes."""
    return write_archive(src_dir, cast(BinaryIO, _NullSink()), level=level, compressor=compressor)
