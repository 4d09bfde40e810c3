"""The extractor: safe, streaming, atomic extraction of tar.gz archives (`extract_archive`).

Members are checked one by one as they stream in, the decompressed size is capped before inflating
further, and the tree is built in a temporary folder that is moved into place only once it all checks out.
"""

from __future__ import annotations

import os
import queue
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import IO, BinaryIO

from prefect_bacalhau_publish.errors import FetchError, UnsafeArchiveError

from ..slicedwrite import SLICE
from .checks import MAX_DEPTH, _link_problem
from .codec import _DECOMPRESS_ERRORS, CHUNK, _inflater

_GZIP_MAGIC = b"\x1f\x8b"
_IN_CHUNK = 64 << 10  # compressed bytes read from the source per step
_OUT_CHUNK = 256 << 10  # most decompressed bytes produced per step
_META_CAP = 1 << 20  # most tar bytes (headers, PAX records, read-ahead) allowed between members
_TAIL_CAP = 16 << 20  # most decompressed bytes allowed after the tar end-of-archive marker
_END_OF_ARCHIVE: tuple[type[BaseException], ...] = (
    tarfile.EOFHeaderError,  # type: ignore[attr-defined]
    tarfile.EmptyHeaderError,  # type: ignore[attr-defined]
)


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


_WRITES_IN_FLIGHT = 32
"""File data chunks (of up to `CHUNK` bytes) handed to the writer thread and not yet written."""


class _FileWriter:
    """Writes member data on a thread of its own, so the kernel's time copying it into the page cache
    overlaps inflating and checking the next bytes on the other core: the 1 GiB mixed archive extracted in
    8.0–8.6 s instead of 10.2–11.3 s writing inline (`tar xzf` 7.5–11.6 s in the same runs,
    bench/results/2026-12-01-cli.md). Files are created by the caller (so links and checks see them at
    once); this writes, sets the mode and closes. The first failure is kept, later data is dropped (every
    file still closed), and `finish` raises it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[int, bytes | None, int, str] | None] = queue.Queue(_WRITES_IN_FLIGHT)
        self.error: tuple[str, OSError] | None = None
        self._thread = threading.Thread(target=self._run, name="pbp-extract-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (op := self._queue.get()) is not None:
            fd, data, mode, name = op
            try:
                if data is None:
                    try:
                        if self.error is None:
                            os.fchmod(fd, mode)
                    finally:
                        os.close(fd)
                elif self.error is None:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view[:SLICE]) :]  # see slicedwrite
            except OSError as exc:
                if self.error is None:
                    self.error = (name, exc)

    def check(self) -> None:
        if self.error is not None:
            name, exc = self.error
            raise FetchError(f"cannot extract member {name!r}: {exc}")

    def write(self, fd: int, data: bytes, name: str) -> None:
        self.check()
        self._queue.put((fd, data, 0, name))

    def close(self, fd: int, mode: int, name: str) -> None:
        self._queue.put((fd, None, mode, name))

    def finish(self, *, raising: bool = True) -> None:
        """Wait for every write and close; raise the first failure (when `raising`)."""
        self._queue.put(None)
        self._thread.join()
        if raising:
            self.check()


class _Extractor:
    """Checks and writes members one by one into ``root``, a fresh folder nobody else writes to."""

    def __init__(
        self, root: str, reader: _GunzipReader, max_bytes: int, max_members: int, writer: _FileWriter
    ) -> None:
        self.root = root
        self.reader = reader
        self.writer = writer
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
        mode = 0o644
        try:
            left = member.size
            while left:
                data = source.read(min(CHUNK, left))
                if not data:
                    raise FetchError(f"truncated archive: member {member.name!r} ends early")
                left -= len(data)
                self.bytes += len(data)
                self.writer.write(fd, data, member.name)
            mode = 0o755 if member.mode & 0o111 else 0o644
        finally:
            self.writer.close(fd, mode, member.name)

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
    writer = _FileWriter()
    extractor = _Extractor(root, reader, max_bytes, max_members, writer)
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
        writer.finish(raising=False)
        raise FetchError(f"corrupt or truncated tar archive: {exc}") from None
    except BaseException:
        writer.finish(raising=False)  # every file closed; this failure is the one to report
        raise
    writer.finish()  # every file written and closed, or the first write failure raised
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
