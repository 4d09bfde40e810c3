"""Extract an archive while it downloads: the download writes a file, the extraction reads it as it grows.

The download (in a thread) keeps its own semantics — resume, verification against the recorded checksum —
and the extraction overlaps it on the other core, as `curl | tar xz` does with two processes. The tree is
extracted into the caller's staging folder and only counts once the download has returned verified: a
download error (checksum mismatch included) wins over whatever the extraction said about the same bytes.
If the download starts over from byte 0 (the server sent the whole file again), the extraction is
dropped and redone from the finished file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from .. import progress
from ..archive import extract_archive
from ..errors import FetchError

__all__ = ["extract_while_downloading"]

T = TypeVar("T")

_STEP = 1 << 20
"""The reader is woken (and reads) a MiB at a time: fewer thread switches, and the GIL changes hands less."""


class _Restarted(Exception):
    """The download went back to byte 0: what was read so far is void."""


class _Cancelled(FetchError):
    """The extraction side gave up (interrupted): the download stops."""


class _Growth:
    """How far the download has written, shared by the writer and the reader."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.size = 0
        self.announced = 0
        self.finished = False
        self.restarted = False
        self.cancelled = False


class _Writer:
    """The download's output: writes go to the file and are announced to the reader at once."""

    def __init__(self, file: BinaryIO, growth: _Growth) -> None:
        self._file = file
        self._growth = growth

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._growth.cancelled:
            raise _Cancelled("the download was cancelled")
        n = self._file.write(data)
        growth = self._growth
        growth.size += n
        if growth.size - growth.announced >= _STEP:
            self._file.flush()
            with growth.cond:
                growth.announced = growth.size
                growth.cond.notify_all()
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        """Only used to start over from byte 0; the reader is told so."""
        result = self._file.truncate(size)
        growth = self._growth
        with growth.cond:
            if growth.size:
                growth.restarted = True
            growth.size = growth.announced = self._file.tell() if size is None else size
            growth.cond.notify_all()
        return result

    def flush(self) -> None:
        self._file.flush()


class _Tail:
    """Reads the file as the download writes it; end of file once the download has finished."""

    def __init__(self, path: Path, growth: _Growth) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by extract_while_downloading
        self._growth = growth
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        growth = self._growth
        with growth.cond:
            while growth.announced <= self._pos and not growth.finished and not growth.restarted:
                growth.cond.wait()
            if growth.restarted:
                raise _Restarted()
            available = (growth.size if growth.finished else growth.announced) - self._pos
        if available <= 0:
            return b""
        data = self._file.read(available if size < 0 else min(size, available))
        if not data:  # announced bytes are gone: the file was truncated to start over
            raise _Restarted()
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._file.close()


def extract_while_downloading(archive: Path, download: Callable[[BinaryIO], T], staging: Path) -> T:
    """Run `download(out)` into the file `archive` and extract it into `staging` (missing or empty) at the
    same time; return what `download` returned. Raises the download's error if it failed, else the
    extraction's; `staging` is only complete and trustworthy when this returns."""
    growth = _Growth()
    failure: list[BaseException] = []
    result: list[T] = []
    with open(archive, "w+b") as file:

        def run() -> None:
            try:
                result.append(download(_Writer(file, growth)))  # type: ignore[arg-type]
            except BaseException as exc:
                failure.append(exc)
            finally:
                try:
                    file.flush()  # everything written is on disk before the reader hears "finished"
                except OSError as exc:
                    failure.append(exc)
                with growth.cond:
                    growth.finished = True
                    growth.cond.notify_all()

        worker = progress.thread(run, "pbp-download")  # in this context: its bytes are this fetch's
        worker.start()
        tail = _Tail(archive, growth)
        extracted: BaseException | None = None
        try:
            extract_archive(tail, staging)  # type: ignore[arg-type]
        except _Restarted:
            extracted = _Restarted()
        except Exception as exc:
            extracted = exc
        except BaseException:  # Ctrl-C: stop the download too
            growth.cancelled = True
            worker.join()
            raise
        finally:
            tail.close()
        worker.join()
    if failure:
        raise failure[0]
    if isinstance(extracted, _Restarted):  # extract_archive left `staging` as it was
        extract_archive(archive, staging)
    elif extracted is not None:
        raise extracted
    return result[0]
