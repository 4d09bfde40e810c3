"""Extract an archive while it downloads: the download's bytes go through a bounded in-memory pipe into the
extraction, as `curl | tar xz` does with two processes, and nothing is spooled to disk.

The download (in a thread) keeps its own semantics — resume, verification against the recorded checksum —
and the extraction overlaps it on the other core. The tree is extracted into the caller's staging folder
and only counts once the download has returned verified: a download error (checksum mismatch included)
wins over whatever the extraction said about the same bytes, so after an extraction failure the rest of
the download still runs (its bytes dropped) to give its verdict. If the download starts over from byte 0
(the server sent the whole file again), the extraction is dropped and starts over on the new bytes.

No spool: a 1 GiB result's archive used to be written to a temporary file and read back, which cost a
second copy of the archive on disk and in the page cache; on this project's 2-core VM that write alone
took 0.2–12 s of kernel time depending on how warm the page cache was (bench/results/2026-12-01-cli.md).
"""

from __future__ import annotations

import shutil
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from .. import progress
from ..archive import extract_archive
from ..errors import FetchError

__all__ = ["extract_while_downloading"]

T = TypeVar("T")

_BUFFERED = 32 << 20
"""Most bytes the download may be ahead of the extraction (memory stays fixed whatever the size)."""


class _Restarted(Exception):
    """The download went back to byte 0: what was read so far is void."""


class _Cancelled(FetchError):
    """The extraction side gave up (interrupted): the download stops."""


class _Pipe:
    """Chunks written by the download, read by the extraction; `generation` counts restarts."""

    def __init__(self, limit: int) -> None:
        self.cond = threading.Condition()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.limit = limit
        self.generation = 0
        self.finished = False
        self.cancelled = False
        self.draining = False  # the extraction is over: drop what arrives


class _Writer:
    """The download's output (`write`, and `seek(0)` + `truncate()` to start over)."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._pos = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        pipe = self._pipe
        n = len(data)
        if not n:
            return 0
        chunk = bytes(data)  # the caller may reuse its buffer
        with pipe.cond:
            while pipe.buffered >= pipe.limit and not (pipe.cancelled or pipe.draining):
                pipe.cond.wait()
            if pipe.cancelled:
                raise _Cancelled("the download was cancelled")
            if not pipe.draining:
                pipe.chunks.append(chunk)
                pipe.buffered += n
                pipe.cond.notify_all()
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise ValueError("the download can only start over from byte 0")
        return 0

    def truncate(self, size: int | None = None) -> int:
        """Start over from byte 0: what was sent so far is dropped and the reader is told so."""
        if size not in (None, 0):
            raise ValueError("the download can only start over from byte 0")
        pipe = self._pipe
        with pipe.cond:
            if self._pos:
                pipe.generation += 1
                pipe.chunks.clear()
                pipe.buffered = 0
                pipe.cond.notify_all()
        self._pos = 0
        return 0

    def flush(self) -> None:
        pass


class _Tail:
    """Reads one generation of the download's bytes; end of file once the download has finished."""

    def __init__(self, pipe: _Pipe) -> None:
        self._pipe = pipe
        self._generation = pipe.generation
        self._chunk = b""
        self._off = 0

    def read(self, size: int = -1) -> bytes:
        if self._off >= len(self._chunk) and not self._next():
            return b""
        end = len(self._chunk) if size < 0 else min(len(self._chunk), self._off + size)
        data = self._chunk[self._off : end] if (self._off, end) != (0, len(self._chunk)) else self._chunk
        self._off = end
        return data

    def _next(self) -> bool:
        pipe = self._pipe
        with pipe.cond:
            while not pipe.chunks and not pipe.finished and pipe.generation == self._generation:
                pipe.cond.wait()
            if pipe.generation != self._generation:
                raise _Restarted()
            if not pipe.chunks:
                return False
            self._chunk = pipe.chunks.popleft()
            pipe.buffered -= len(self._chunk)
            pipe.cond.notify_all()
        self._off = 0
        return True

    def drain(self) -> None:
        """Read to the end of this generation (raises `_Restarted` if the download starts over)."""
        while self.read(1 << 20):
            pass


def extract_while_downloading(download: Callable[[BinaryIO], T], staging: Path) -> T:
    """Run `download(out)` and extract what it writes into `staging` (missing or empty) at the same time;
    return what `download` returned. Raises the download's error if it failed, else the extraction's;
    `staging` is only complete and trustworthy when this returns."""
    pipe = _Pipe(_BUFFERED)
    failure: list[BaseException] = []
    result: list[T] = []

    def run() -> None:
        try:
            result.append(download(_Writer(pipe)))  # type: ignore[arg-type]
        except BaseException as exc:
            failure.append(exc)
        finally:
            with pipe.cond:
                pipe.finished = True
                pipe.cond.notify_all()

    worker = progress.thread(run, "pbp-download")  # in this context: its bytes are this fetch's
    worker.start()
    extracted: BaseException | None = None
    try:
        while True:
            tail = _Tail(pipe)
            try:
                extract_archive(tail, staging)  # type: ignore[arg-type]
                tail.drain()  # bytes after the archive's end: the download must still finish this generation
                break
            except _Restarted:
                shutil.rmtree(staging, ignore_errors=True)  # extract_archive left it untouched, or it is void
            except Exception as exc:
                extracted = exc
                break
    except BaseException:  # Ctrl-C: stop the download too
        with pipe.cond:
            pipe.cancelled = True
            pipe.cond.notify_all()
        worker.join()
        raise
    finally:
        with pipe.cond:
            pipe.draining = True  # the download runs to its end (its verdict wins); its bytes are dropped
            pipe.chunks.clear()
            pipe.buffered = 0
            pipe.cond.notify_all()
    worker.join()
    if failure:
        raise failure[0]
    if extracted is not None:
        raise extracted
    return result[0]
