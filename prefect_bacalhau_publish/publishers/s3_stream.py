"""Upload one byte stream (the result archive) to S3 as it is produced: a single PUT, or parts in flight.

The producer writes into a fixed pool of part-sized buffers (anonymous memory maps, returned to the system
when the upload ends), so memory is `(in_flight + 1) × part_size` whatever the archive's size, and no
pipe or temporary file copies the bytes. Each part is hashed once, in the worker that sends it: the same
SHA-256 is sent as the part's `x-amz-checksum-sha256` (S3 refuses a part whose bytes do not match it) and
goes into the composite checksum this side expects. Parts go through boto3's `upload_part`, for AWS and
S3-compatible stores alike; the checksum and version S3 stored come from the `CompleteMultipartUpload`
(or single `PutObject`) response, so publishing needs `s3:PutObject` and nothing more.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import mmap
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..checksums import b64, composite
from ..errors import S3PublishError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["MAX_PARTS", "PartSink", "StreamAborted", "run_threads", "upload_stream"]

MAX_PARTS = 10_000
"""S3's limit on the parts of one multipart upload."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None elsewhere (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


_TRIM = _malloc_trim()


def _give_back_free_memory() -> None:
    """Return the C heap's free pages to the system once per part.

    The archive's ~1 MiB compressed chunks are freed as soon as they are copied, but glibc raises its mmap
    threshold after the first one and keeps them on the heap, pinned by small long-lived objects: without
    this, peak memory grew 13 MiB from a 1 GiB to a 4 GiB archive; with it, it is flat.
    """
    if _TRIM is not None:
        _TRIM(0)


class StreamAborted(Exception):
    """Raised inside the producer when the upload gave up: nothing more will be read."""


class PartSink:
    """A write-only stream that cuts what is written into parts of `part_size` bytes in at most `buffers`
    reusable buffers; `write` blocks while every buffer waits to be sent (back-pressure)."""

    def __init__(self, part_size: int, buffers: int) -> None:
        self.part_size = part_size
        self.size = 0
        self._max = buffers
        self._all: list[mmap.mmap] = []
        self._free: list[mmap.mmap] = []
        self._ready: deque[tuple[int, mmap.mmap, int, bool]] = deque()
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._ended = False
        self._numbered = 0
        self._current: mmap.mmap | None = None
        self._fill = 0

    # producer side -----------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        total = len(view)
        while view:
            if self._current is None:
                self._current = self._take()
            take = min(len(view), self.part_size - self._fill)
            self._current[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self.part_size:
                self._emit(final=False)
        self.size += total  # progress is counted where the archive reads the files, not here
        return total

    def flush(self) -> None:
        """Nothing to flush: parts are handed on when full, the last one by `finish`."""

    def finish(self) -> None:
        """The stream is complete: hand on the last, possibly partial (or empty) part."""
        if self._current is None:
            self._current = self._take()
        self._emit(final=True)

    def fail(self, error: BaseException) -> None:
        """The producer failed with `error`; the consumer raises it."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def _take(self) -> mmap.mmap:
        with self._cond:
            while not self._free and len(self._all) >= self._max and not self._closed:
                self._cond.wait()
            if self._closed:
                raise StreamAborted("the upload ended before the archive was complete")
            if self._free:
                return self._free.pop()
            buffer = mmap.mmap(-1, self.part_size)
            self._all.append(buffer)
            return buffer

    def _emit(self, *, final: bool) -> None:
        assert self._current is not None
        with self._cond:
            self._numbered += 1
            self._ready.append((self._numbered, self._current, self._fill, final))
            self._ended = final
            self._cond.notify_all()
        self._current, self._fill = None, 0

    # consumer side -----------------------------------------------------------------------------------
    def next_part(self) -> tuple[int, mmap.mmap, int, bool] | None:
        """The next part `(number, buffer, length, final)` in stream order, None after the final one;
        raises the producer's error."""
        with self._cond:
            while not self._ready and self._error is None and not self._closed:
                if self._ended:
                    return None
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StreamAborted("the upload was stopped")
            return self._ready.popleft()

    def release(self, buffer: mmap.mmap) -> None:
        """A part was sent: its buffer can take the next one."""
        _give_back_free_memory()
        with self._cond:
            self._free.append(buffer)
            self._cond.notify_all()

    def close(self) -> None:
        """Stop: a waiting producer gets StreamAborted; the buffers go back to the system."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def unmap(self) -> None:
        """Return every buffer to the system (after the producer and all workers have stopped)."""
        with self._cond:
            for buffer in self._all:
                buffer.close()
            self._all.clear()
            self._free.clear()
            self._ready.clear()


def upload_stream(
    client: S3Client,
    bucket: str,
    key: str,
    sink: PartSink,
    *,
    threshold: int,
    in_flight: int,
    content_type: str,
    started: Callable[[str], object] = lambda upload_id: None,
) -> tuple[str, str | None]:
    """Upload what the producer writes into `sink` to `s3://bucket/key`; return (ChecksumSHA256, VersionId).

    A stream that ends before `threshold` bytes (and within one part) goes up in one PUT; otherwise a
    multipart upload with `in_flight` parts sent at once; `started(upload_id)` is called as soon as the
    upload exists, so that the caller can abort it by its id on failure. Both values come from S3's
    response, and the checksum is compared with the one computed here.
    """
    first = sink.next_part()
    assert first is not None  # finish() always hands on a final part
    _number, buffer, length, final = first
    if final and length < threshold:
        with memoryview(buffer) as whole:
            body = bytes(whole[:length])
        sink.release(buffer)
        checksum = b64(hashlib.sha256(body).digest())
        put = client.put_object(
            Bucket=bucket, Key=key, Body=body, ChecksumSHA256=checksum, ContentType=content_type
        )
        return _verified(bucket, key, put.get("ChecksumSHA256", ""), checksum, put.get("VersionId"))
    created = client.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", ContentType=content_type
    )
    started(created["UploadId"])
    upload = _Upload(client, bucket, key, created["UploadId"], sink)
    upload.run(first, max(1, in_flight))
    done = sorted(upload.parts.items())
    parts = [{"PartNumber": n, "ETag": etag, "ChecksumSHA256": b64(digest)} for n, (etag, digest) in done]
    completed = client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=created["UploadId"],
        MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
    )
    expected = composite([digest for _, (_, digest) in done])
    stored = completed.get("ChecksumSHA256", "")
    return _verified(bucket, key, stored, expected, completed.get("VersionId"))


def _verified(
    bucket: str, key: str, stored: str, expected: str, version: str | None
) -> tuple[str, str | None]:
    """S3's checksum, which must equal ours: a store that stores none could not verify a later fetch."""
    if stored != expected:
        raise S3PublishError(
            f"publish to s3://{bucket}/{key} failed: S3 reports checksum {stored or '(none)'} but the archive "
            f"uploaded has {expected}; publish again"
        )
    return stored, version


def run_threads(threads: Sequence[threading.Thread], on_interrupt: Callable[[], object]) -> None:
    """Start the threads and wait for them all; on Ctrl-C while waiting, call `on_interrupt`, wait for
    them again, and re-raise."""
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        on_interrupt()
        for thread in threads:
            thread.join()
        raise


class _Upload:
    """The workers of one multipart upload: each takes the next part, hashes it, sends it, frees it."""

    def __init__(self, client: S3Client, bucket: str, key: str, upload_id: str, sink: PartSink) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.upload_id = upload_id
        self.sink = sink
        self.parts: dict[int, tuple[str, bytes]] = {}
        self.failure: BaseException | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self, first: tuple[int, mmap.mmap, int, bool], workers: int) -> None:
        threads = [
            threading.Thread(
                target=self._work, args=(first if n == 0 else None,), name=f"pbp-s3-part-{n}", daemon=True
            )
            for n in range(workers)
        ]
        run_threads(threads, on_interrupt=self._interrupted)
        if self.failure is not None:
            raise self.failure

    def _interrupted(self) -> None:
        """Ctrl-C while waiting: stop the producer and the workers."""
        self._fail(KeyboardInterrupt())

    def _fail(self, error: BaseException) -> None:
        with self.lock:
            if self.failure is None or isinstance(self.failure, StreamAborted):
                self.failure = error
        self.stop.set()
        self.sink.close()

    def _work(self, job: tuple[int, mmap.mmap, int, bool] | None) -> None:
        try:
            while not self.stop.is_set():
                if job is None:
                    job = self.sink.next_part()
                    if job is None:
                        return
                number, buffer, length, _final = job
                job = None
                if number > MAX_PARTS:
                    raise S3PublishError(
                        f"publish to s3://{self.bucket}/{self.key} failed: the archive needs more than "
                        f"{MAX_PARTS} parts of {self.sink.part_size} bytes; raise multipart_chunksize on "
                        "the S3Storage block"
                    )
                if length or number == 1:
                    with memoryview(buffer) as whole, whole[:length] as body:
                        digest = hashlib.sha256(body).digest()
                        etag = self._send(number, body, digest)
                    with self.lock:
                        self.parts[number] = (etag, digest)
                self.sink.release(buffer)
        except BaseException as exc:
            self._fail(exc)

    def _send(self, number: int, body: memoryview, digest: bytes) -> str:
        response: Any = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=_Body(body),  # type: ignore[arg-type]  # a readable, seekable file
            ContentLength=len(body),
            ChecksumSHA256=b64(digest),
        )
        return str(response["ETag"])


class _Body(io.RawIOBase):
    """A part's buffer as a seekable file, so botocore streams it (and can rewind it to retry) without a copy."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        chunk = self._view[self._pos : self._pos + len(target)]
        count = len(chunk)
        target[:count] = chunk
        self._pos += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos
