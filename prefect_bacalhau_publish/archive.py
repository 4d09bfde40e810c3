"""Deterministic, streaming tar.gz archives of result folders, and safe, atomic extraction of them.

The archives are PAX-format tar inside one gzip member (header: no file name, mtime 0), which GNU tar,
Python's tarfile and Go's archive/tar + compress/gzip (Bacalhau's reader) all accept.

Compression uses ISA-L (``isal``) when it is importable and zlib otherwise; the choice is made once at
import time (`DEFAULT_COMPRESSOR`) and can be overridden per call with ``compressor="zlib"`` or
``compressor="isal"``. Output is byte-identical for the same folder, level and compressor; ISA-L and
zlib produce different (equally valid) bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal, Protocol, cast

from prefect_bacalhau_publish.errors import FetchError, PublishError, UnsafeArchiveError

try:
    from isal import isal_zlib as _isal_zlib

    HAVE_ISAL = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_ISAL = False

__all__ = [
    "DEFAULT_COMPRESSOR",
    "HAVE_ISAL",
    "ArchiveInfo",
    "Compressor",
    "archive_digest",
    "extract_archive",
    "write_archive",
]

Compressor = Literal["isal", "zlib"]
DEFAULT_COMPRESSOR: Compressor = "isal" if HAVE_ISAL else "zlib"

CHUNK = 1 << 20  # tar stream bytes per compression step; also the file read/write size
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_GZIP_MAGIC = b"\x1f\x8b"
_IN_CHUNK = 64 << 10  # compressed bytes read from the source per step
_OUT_CHUNK = 256 << 10  # most decompressed bytes produced per step
_META_CAP = 1 << 20  # most tar bytes (headers, PAX records, read-ahead) allowed between members
_TAIL_CAP = 16 << 20  # most decompressed bytes allowed after the tar end-of-archive marker
MAX_DEPTH = 256  # path components in one member name: deeper trees are refused, not extracted
_MAX_HOPS = 40  # symlinks followed when resolving one target, as Linux does
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (zlib.error,)
if HAVE_ISAL:
    _DECOMPRESS_ERRORS += (cast("type[BaseException]", _isal_zlib.IsalError),)
_END_OF_ARCHIVE: tuple[type[BaseException], ...] = (
    tarfile.EOFHeaderError,  # type: ignore[attr-defined]
    tarfile.EmptyHeaderError,  # type: ignore[attr-defined]
)


@dataclass(frozen=True)
class ArchiveInfo:
    """What `write_archive` wrote: SHA-256 and size of the compressed bytes, regular files, content bytes."""

    sha256: str
    size: int
    files: int
    bytes_in: int


class _Deflater(Protocol):
    def compress(self, data: memoryview, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _Inflater(Protocol):
    @property
    def unused_data(self) -> bytes: ...
    @property
    def unconsumed_tail(self) -> bytes: ...
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def _deflater(compressor: Compressor, level: int) -> _Deflater:
    if not 0 <= level <= 9:
        raise ValueError(f"compression level must be 0-9, not {level}")
    if compressor == "isal":
        if not HAVE_ISAL:
            raise ValueError("compressor='isal' needs the isal package")
        return _isal_zlib.compressobj(min(level, 3), _isal_zlib.DEFLATED, 31)  # ISA-L levels are 0-3
    if compressor == "zlib":
        return zlib.compressobj(level, zlib.DEFLATED, 31)
    raise ValueError(f"unknown compressor {compressor!r}")


def _inflater() -> _Inflater:
    return _isal_zlib.decompressobj(31) if HAVE_ISAL else zlib.decompressobj(31)


# ---------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Entry:
    rel: str  # relative POSIX path, no trailing slash
    type: bytes  # tarfile.DIRTYPE, REGTYPE or SYMTYPE
    mode: int
    size: int = 0
    target: str = ""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"an unsupported file type ({stat.filemode(mode)})"


def _link_problem(links: Mapping[str, str], name: str, target: str) -> str | None:
    """Why symlink ``name -> target`` points outside its tree (following the tree's other links), or None."""
    if not target:
        return "has an empty target"
    if target.startswith("/"):
        return f"points to the absolute path {target!r}"
    here = name.split("/")[:-1]
    parts = deque(target.split("/"))
    hops = 0
    while parts:
        part = parts.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return f"target {target!r} resolves outside the folder"
            here.pop()
            continue
        here.append(part)
        via = links.get("/".join(here))
        if via is not None:
            hops += 1
            if hops > _MAX_HOPS or via.startswith("/"):
                return f"target {target!r} goes through a symlink loop or an absolute symlink"
            here.pop()
            parts.extendleft(reversed(via.split("/")))
    return None


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
                    raise PublishError(f"{item.path} is {_kind(mode)}; only files, folders and symlinks")
            except OSError as exc:
                raise PublishError(f"cannot read {item.path}: {exc}") from None
    entries.sort(key=lambda e: os.fsencode(e.rel))
    links = {e.rel: e.target for e in entries if e.type == tarfile.SYMTYPE}
    for rel, target in links.items():
        problem = _link_problem(links, rel, target)
        if problem:
            raise PublishError(f"symlink {os.path.join(root, rel)} {problem}; refusing to archive it")
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
        """Append up to ``size`` bytes read from ``fd`` (straight into the chunk buffer); return the count."""
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
            n = self._out.write(view)
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


# ------------------------------------------------------------------------------------------- extraction


class _GunzipReader:
    """A read-only stream of the decompressed bytes of a gzip source, which refuses to hand out more than
    ``limit`` bytes in total (checked before inflating further, so a gzip bomb stops early)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.pos = 0
        self.limit = 0
        self.limit_reason = ""
        self._raw = raw
        self._raw_eof = False
        self._in = b""
        self._out = b""
        self._off = 0
        self._done = False
        while len(self._in) < 2 and self._more_input():
            pass
        if self._in[:2] != _GZIP_MAGIC:
            raise UnsafeArchiveError("not a gzip archive" + ("" if self._in else " (the input is empty)"))
        self._inflater = _inflater()

    def allow(self, n: int, reason: str) -> None:
        """Let ``n`` more bytes be read from here on; reading past that raises UnsafeArchiveError(reason)."""
        self.limit = self.pos + n
        self.limit_reason = reason

    def read(self, size: int = -1) -> bytes:
        if self._off >= len(self._out) and not self._inflate():
            return b""
        n = len(self._out) - self._off if size < 0 else min(size, len(self._out) - self._off)
        if self.pos + n > self.limit:
            raise UnsafeArchiveError(self.limit_reason)
        data = self._out[self._off : self._off + n]
        self._off += n
        self.pos += n
        return data

    def _more_input(self) -> bool:
        try:
            data = self._raw.read(_IN_CHUNK)
        except OSError as exc:
            raise FetchError(f"cannot read the archive: {exc}") from None
        if not data:
            self._raw_eof = True
            return False
        self._in += data
        return True

    def _inflate(self) -> bool:
        """Refill the output buffer; False at the end of the gzip data (trailing non-gzip bytes ignored)."""
        while not self._done:
            if self._inflater.eof:  # a gzip member ended; another may follow
                self._in = self._inflater.unused_data + self._in
                while len(self._in) < 2 and self._more_input():
                    pass
                if self._in[:2] != _GZIP_MAGIC:
                    self._done = True
                    break
                self._inflater = _inflater()
            if not self._in and not self._raw_eof:
                self._more_input()
            try:
                out = self._inflater.decompress(self._in, _OUT_CHUNK)
            except _DECOMPRESS_ERRORS as exc:
                raise FetchError(f"corrupt gzip data: {exc}") from None
            self._in = self._inflater.unconsumed_tail
            if out:
                self._out, self._off = out, 0
                return True
            if self._raw_eof and not self._in and not self._inflater.eof:
                raise FetchError("truncated archive: the gzip data ends early")
        return False


class _TarInfo(tarfile.TarInfo):
    """Treats a corrupt or cut-off header as an error instead of as the end of the archive."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> _TarInfo:
        try:
            return super().fromtarfile(tar)
        except _END_OF_ARCHIVE:
            raise
        except tarfile.HeaderError as exc:
            raise FetchError(f"corrupt or truncated tar archive: {exc}") from None


_ALLOWED_TYPES = (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
_TYPE_NAMES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


class _Extractor:
    """Checks and writes members one by one into ``root``, a fresh folder nobody else writes to."""

    def __init__(self, root: str, reader: _GunzipReader, max_bytes: int, max_members: int) -> None:
        self.root = root
        self.reader = reader
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.members = 0
        self.bytes = 0
        self.dirs: set[str] = set()  # folders made so far, listed or implied
        self.listed_dirs: set[str] = set()
        self.files: set[str] = set()
        self.links: dict[str, str] = {}

    def refuse(self, member: tarfile.TarInfo, reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"unsafe archive member {member.name!r}: {reason}")

    def name_of(self, member: tarfile.TarInfo, raw: str, what: str = "name") -> str:
        if raw.startswith("/"):
            raise self.refuse(member, f"absolute {what} {raw!r}")
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member, f"{what} {raw!r} has a '..' component")
        if len(parts) > MAX_DEPTH:
            raise self.refuse(member, f"{what} is nested {len(parts)} levels deep (more than {MAX_DEPTH})")
        return "/".join(parts)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise self.refuse(member, f"the archive has more than {self.max_members} members")
        if member.type not in _ALLOWED_TYPES:
            kind = _TYPE_NAMES.get(member.type, f"an unsupported member type {member.type!r}")
            raise self.refuse(member, f"is {kind}")
        if member.sparse is not None:  # PAX-style sparse file: a tiny archive could expand hugely
            raise self.refuse(member, "is a sparse file")
        name = self.name_of(member, member.name)
        if not name:
            if member.isdir():
                return  # "./": the destination itself
            raise self.refuse(member, "the name is empty")
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self.links:
                raise self.refuse(member, f"its parent {parent!r} is a symlink")
            if parent in self.files:
                raise self.refuse(member, f"its parent {parent!r} is a file")
        if name in self.files or name in self.links or name in self.listed_dirs:
            raise self.refuse(member, "duplicate member name")
        if name in self.dirs and not member.isdir():
            raise self.refuse(member, "the name is already a folder")
        for i in range(1, len(parts)):
            self.mkdir("/".join(parts[:i]))
        path = os.path.join(self.root, name)
        if member.isdir():
            self.mkdir(name)
            self.listed_dirs.add(name)
        elif member.issym():
            problem = _link_problem(self.links, name, member.linkname)
            if problem:
                raise self.refuse(member, f"symlink {problem}")
            os.symlink(member.linkname, path)
            self.links[name] = member.linkname
        elif member.islnk():
            target = self.name_of(member, member.linkname, "hard link target")
            if target not in self.files:
                raise self.refuse(member, f"hard link target {member.linkname!r} is not an earlier file")
            os.link(os.path.join(self.root, target), path, follow_symlinks=False)
            self.files.add(name)
        else:
            self.write_file(tar, member, path)
            self.files.add(name)

    def mkdir(self, name: str) -> None:
        if name not in self.dirs:
            path = os.path.join(self.root, name)
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)
            self.dirs.add(name)

    def write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        if self.bytes + member.size > self.max_bytes:
            raise self.refuse(member, f"the archive holds more than {self.max_bytes} bytes of file data")
        self.reader.allow(member.size + _META_CAP, f"member {member.name!r} is longer than its header says")
        source = tar.extractfile(member)
        if source is None:  # not reached: regular members always have a data stream
            raise self.refuse(member, "has no data")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            left = member.size
            while left:
                data = source.read(min(CHUNK, left))
                if not data:
                    raise FetchError(f"truncated archive: member {member.name!r} ends early")
                left -= len(data)
                self.bytes += len(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o755 if member.mode & 0o111 else 0o644)
        finally:
            os.close(fd)

    def check_links(self) -> None:
        """Re-check every symlink against the whole tree: a later link may redirect an earlier one."""
        for name, target in self.links.items():
            problem = _link_problem(self.links, name, target)
            if problem:
                raise UnsafeArchiveError(f"unsafe archive member {name!r}: symlink {problem}")


def _extract_into(raw: IO[bytes], root: str, max_bytes: int, max_members: int) -> None:
    reader = _GunzipReader(raw)
    meta = f"a tar header is larger than {_META_CAP} bytes"
    reader.allow(_META_CAP, meta)
    extractor = _Extractor(root, reader, max_bytes, max_members)
    try:
        with tarfile.open(fileobj=reader, mode="r|", tarinfo=_TarInfo, bufsize=_OUT_CHUNK) as tar:  # type: ignore[call-overload]
            while True:
                reader.allow(_META_CAP, meta)
                member = tar.next()
                if member is None:
                    break
                tar.members.clear()  # tarfile keeps every member otherwise
                try:
                    extractor.add(tar, member)
                except OSError as exc:
                    raise FetchError(f"cannot extract member {member.name!r}: {exc}") from None
        reader.allow(_TAIL_CAP, f"more than {_TAIL_CAP} bytes follow the end of the tar archive")
        while reader.read(CHUNK):  # check the gzip trailer (CRC and length)
            pass
    except tarfile.TarError as exc:
        raise FetchError(f"corrupt or truncated tar archive: {exc}") from None
    extractor.check_links()


def _commit(tmp: str, dest: str) -> None:
    """Move the extracted tree in ``tmp`` into ``dest`` (see `extract_archive`)."""
    os.chmod(tmp, 0o755)
    if not os.path.lexists(dest):
        os.rename(tmp, dest)
        return
    if not os.path.islink(dest) and not os.listdir(dest):
        os.rmdir(dest)
        try:
            os.rename(tmp, dest)
        except OSError:
            os.mkdir(dest)
            raise
        return
    names = sorted(os.listdir(tmp))
    clashes = [n for n in names if os.path.lexists(os.path.join(dest, n))]
    if clashes:
        raise FetchError(f"{dest} already holds {', '.join(map(repr, clashes[:5]))}; refusing to overwrite")
    moved: list[str] = []
    try:
        for name in names:
            os.rename(os.path.join(tmp, name), os.path.join(dest, name))
            moved.append(name)
    except OSError:
        for name in reversed(moved):
            os.rename(os.path.join(dest, name), os.path.join(tmp, name))
        raise
    os.rmdir(tmp)


def extract_archive(
    src: Path | str | BinaryIO,
    dest_dir: Path,
    *,
    max_bytes: int = 100 * 2**30,
    max_members: int = 1_000_000,
) -> None:
    """Safely extract the tar.gz ``src`` (a path, or any readable stream, seekable or not) into ``dest_dir``.

    Every member is checked while streaming: absolute names, '..', duplicates, devices/FIFOs/other types,
    symlinks that are absolute or resolve outside the destination, members under a symlink, hard links
    to anything but an earlier file, more than ``max_bytes`` of file data or ``max_members`` members all
    raise UnsafeArchiveError naming the member; non-gzip, corrupt or truncated input raises
    UnsafeArchiveError/FetchError. File modes become 0o644/0o755, folders 0o755.

    The tree is built in a temporary folder beside ``dest_dir`` and moved in only once the whole archive
    checked out: it becomes ``dest_dir`` if that is missing or empty; otherwise its top-level entries are
    moved in, and any name already in ``dest_dir`` makes the call fail (FetchError) before anything moves.
    On failure ``dest_dir`` is left as it was and the temporary folder is removed.
    """
    dest = os.path.abspath(dest_dir)
    parent, base = os.path.split(dest)
    if not os.path.isdir(parent):
        raise FetchError(f"cannot extract into {dest}: the folder {parent} does not exist")
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise FetchError(f"cannot extract into {dest}: it exists and is not a folder")
    tmp = tempfile.mkdtemp(prefix=f".{base}.extract-", dir=parent)
    try:
        if isinstance(src, (str, os.PathLike)):
            try:
                raw = open(src, "rb")  # noqa: SIM115 - closed below; open errors need their own message
            except OSError as exc:
                raise FetchError(f"cannot open the archive {src}: {exc}") from None
            with raw:
                _extract_into(raw, tmp, max_bytes, max_members)
        else:
            _extract_into(src, tmp, max_bytes, max_members)
        try:
            _commit(tmp, dest)
        except OSError as exc:
            raise FetchError(f"cannot move the extracted files into {dest}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
