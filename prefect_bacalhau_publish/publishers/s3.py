"""The S3 publisher: one streamed tar.gz object (gzip, the default) or one object per file (plain)."""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from .. import journal
from ..archive import write_archive
from ..blocks import S3Storage
from ..checksums import PartHasher
from ..errors import PublishError, S3PublishError
from ..naming import render_key
from ..progress import advance
from ..s3errors import explain
from ..specs import ExecutionContext, PublishedResult, PublisherSpec
from .s3_fast import upload_small_files

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger("prefect_bacalhau_publish.s3")

__all__ = ["publish"]


def publish(
    result_dir: Path, spec: PublisherSpec, context: ExecutionContext, target: S3Storage | None
) -> PublishedResult:
    """Publish `result_dir` as Bacalhau's S3 publisher does and return the published result spec."""
    params = spec.s3
    storage = target if target is not None else S3Storage()
    endpoint = params.endpoint or storage.endpoint_url
    client = storage.get_client(params.endpoint, params.region)
    region = params.region or client.meta.region_name
    key = render_key(params.key, context=context, archive=params.archived)
    out: dict[str, Any] = {"Bucket": params.bucket, "Key": key, "Region": region, "Endpoint": endpoint}
    started = time.perf_counter()
    _abort_pending(client, endpoint, params.bucket)
    try:
        if params.archived:
            try:
                out.update(_upload_archive(client, storage, result_dir, params.bucket, key))
            except BaseException:
                _abort_uploads(client, endpoint, params.bucket, key)
                raise
        else:
            count = _upload_plain(
                client, storage, result_dir, params.bucket, key, (params.endpoint, params.region)
            )
            logger.info("published %d files to s3://%s/%s", count, params.bucket, key)
    except (ClientError, BotoCoreError) as exc:
        raise S3PublishError(
            explain(exc, action="publish to", bucket=params.bucket, key=key, endpoint=endpoint)
        ) from exc
    logger.info("published s3://%s/%s in %.2fs", params.bucket, key, time.perf_counter() - started)
    return PublishedResult.model_validate({"Type": "s3", "Params": out})


def _abort_uploads(client: S3Client, endpoint: str | None, bucket: str, key: str) -> None:
    """Abort every incomplete multipart upload of `key`; if the store cannot be reached, journal the key."""
    try:
        listed = client.list_multipart_uploads(Bucket=bucket, Prefix=key)
        for upload in listed.get("Uploads", []):
            if upload.get("Key") == key:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
        journal.forget(endpoint, bucket, key)
    except (ClientError, BotoCoreError):
        logger.warning("could not clean up s3://%s/%s now; the next publish to the bucket will", bucket, key)
        journal.remember(endpoint, bucket, key)


def _abort_pending(client: S3Client, endpoint: str | None, bucket: str) -> None:
    """Clean up what an earlier failed publish to this bucket could not."""
    for key in journal.pending(endpoint, bucket):
        _abort_uploads(client, endpoint, bucket, key)


class _HashingWriter:
    """A write-only stream that passes bytes on to `sink` and hashes them for S3's checksum forms."""

    def __init__(self, sink: Any, part_size: int) -> None:
        self._sink = sink
        self.hasher = PartHasher(part_size)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sink.write(data)
        self.hasher.update(data)
        advance(len(data))
        return len(data)

    def flush(self) -> None:
        self._sink.flush()


class _PipeReader:
    """The read end of the archive pipe, after `prefix`; raises the writer's error instead of an early EOF."""

    def __init__(self, fd: int, failed: list[BaseException]) -> None:
        self._file = os.fdopen(fd, "rb", buffering=1024 * 1024)
        self._failed = failed
        self._prefix = memoryview(b"")

    def unread(self, data: bytes) -> None:
        """Serve `data` again before the rest of the pipe."""
        self._prefix = memoryview(data)

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            take = len(self._prefix) if size < 0 else min(size, len(self._prefix))
            data, self._prefix = bytes(self._prefix[:take]), self._prefix[take:]
            return data
        data = self._file.read(size)
        if not data and self._failed:
            raise self._failed[0]
        return data

    def close(self) -> None:
        self._file.close()


_PARTS_IN_MEMORY = 4


def _upload_archive(
    client: S3Client, storage: S3Storage, result_dir: Path, bucket: str, key: str
) -> dict[str, Any]:
    """Stream the deterministic tar.gz through a pipe to S3 and verify what S3 stored.

    An archive smaller than `multipart_threshold` goes up in one PUT (its response carries the checksum and
    version); a larger one streams through boto3's transfer manager as a multipart upload, with at most
    `_PARTS_IN_MEMORY` parts buffered, so memory stays flat whatever the result's size.
    """
    read_fd, write_fd = os.pipe()
    failed: list[BaseException] = []
    writer_file = os.fdopen(write_fd, "wb", buffering=1024 * 1024)
    writer = _HashingWriter(writer_file, storage.multipart_chunksize)

    def produce() -> None:
        try:
            write_archive(result_dir, writer)  # type: ignore[arg-type]
            writer_file.flush()
        except BaseException as exc:  # handed to the reader, which raises it inside the upload
            failed.append(exc)
        finally:
            try:
                writer_file.close()
            except OSError as exc:  # the reader is gone: the upload failed and says why
                failed.append(exc)

    reader = _PipeReader(read_fd, failed)
    producer = threading.Thread(target=produce, name="pbp-archive", daemon=True)
    producer.start()
    extra = {"ChecksumAlgorithm": "SHA256", "ContentType": "application/gzip"}
    try:
        first = reader.read(storage.multipart_threshold)
        multipart = len(first) >= storage.multipart_threshold
        if not multipart:
            producer.join()
            if failed:
                raise failed[0]
            put = client.put_object(Bucket=bucket, Key=key, Body=first, **extra)  # type: ignore[arg-type]
            stored, version = put.get("ChecksumSHA256", ""), put.get("VersionId")
        else:
            reader.unread(first)
            del first
            config = TransferConfig(
                multipart_threshold=storage.multipart_threshold,
                multipart_chunksize=storage.multipart_chunksize,
                max_concurrency=min(_PARTS_IN_MEMORY, storage.max_concurrency),
            )
            config.max_in_memory_upload_chunks = _PARTS_IN_MEMORY
            client.upload_fileobj(reader, bucket, key, ExtraArgs=extra, Config=config)  # type: ignore[arg-type]
    except PublishError:
        raise
    except Exception as exc:
        if failed and isinstance(failed[0], PublishError):
            raise failed[0] from exc
        raise
    finally:
        reader.close()
        producer.join()
    if failed:
        raise failed[0]
    expected = writer.hasher.checksum(multipart)
    if multipart:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        stored, version = head.get("ChecksumSHA256", ""), head.get("VersionId")
    if stored != expected:
        raise S3PublishError(
            f"publish to s3://{bucket}/{key} failed: S3 reports checksum {stored or '(none)'} but the archive "
            f"uploaded has {expected}; the key was probably overwritten concurrently, publish again"
        )
    logger.info("archive s3://%s/%s: %d bytes, checksum %s", bucket, key, writer.hasher.size, expected)
    out: dict[str, Any] = {"ChecksumSHA256": stored}
    if version and version != "null":
        out["VersionID"] = version
    return out


def _walk_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                raise S3PublishError(
                    f"publish of {path} refused: plain S3 results hold regular files only (links, devices, "
                    "FIFOs are not published); remove it or use Encoding gzip"
                )
            yield path


def _upload_plain(
    client: S3Client,
    storage: S3Storage,
    result_dir: Path,
    bucket: str,
    prefix: str,
    overrides: tuple[str | None, str | None],
) -> int:
    """Upload every file to `prefix + relative/path` concurrently, each with a SHA-256 checksum.

    Files below the multipart threshold go through the lean signed-PUT uploader (`s3_fast`), larger ones
    through boto3's transfer manager. On failure, the objects already uploaded are deleted again so no
    partial result is left behind.
    """
    files = list(_walk_files(result_dir))
    config = TransferConfig(
        multipart_threshold=storage.multipart_threshold,
        multipart_chunksize=storage.multipart_chunksize,
        max_concurrency=4,
    )
    keyed = [(path, prefix + path.relative_to(result_dir).as_posix()) for path in files]
    small = [(path, key) for path, key in keyed if path.stat().st_size < storage.multipart_threshold]
    large = [(path, key) for path, key in keyed if path.stat().st_size >= storage.multipart_threshold]
    done: list[str] = []
    lock = threading.Lock()

    def upload(item: tuple[Path, str]) -> None:
        path, key = item
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        extra = {"ChecksumAlgorithm": "SHA256", "ContentType": content_type}
        client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=config)
        with lock:
            done.append(key)

    try:
        upload_small_files(
            storage,
            *overrides,
            bucket,
            small,
            concurrency=storage.max_concurrency,
            done=done,
            error_key=prefix,
        )
        with ThreadPoolExecutor(max_workers=min(4, storage.max_concurrency)) as pool:
            for future in [pool.submit(upload, item) for item in large]:
                future.result()
    except BaseException:
        for start in range(0, len(done), 1000):
            batch = [{"Key": k} for k in done[start : start + 1000]]
            try:
                client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})  # type: ignore[typeddict-item]
            except (ClientError, BotoCoreError):
                logger.warning(
                    "could not remove %d partial objects under s3://%s/%s", len(batch), bucket, prefix
                )
        raise
    return len(files)
