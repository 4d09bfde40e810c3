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
from ..errors import S3PublishError
from ..naming import render_key
from ..s3errors import explain
from ..specs import ExecutionContext, PublishedResult, PublisherSpec
from .s3_fast import fast_target, upload_small_files
from .s3_stream import PartSink, upload_stream

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


_PARTS_IN_FLIGHT = 2
"""Parts sent at once (with one more being filled): enough to keep a loopback store and both cores busy."""


def _upload_archive(
    client: S3Client, storage: S3Storage, result_dir: Path, bucket: str, key: str
) -> dict[str, Any]:
    """Stream the deterministic tar.gz to S3 while it is written, and verify the checksum S3 stored.

    An archive smaller than `multipart_threshold` goes up in one PUT (its response carries the checksum and
    version); a larger one as a multipart upload of `multipart_chunksize` parts, `_PARTS_IN_FLIGHT` at a
    time, with memory fixed at `(_PARTS_IN_FLIGHT + 1) × multipart_chunksize` whatever the result's size.
    """
    target = fast_target(client, storage, bucket)
    in_flight = min(_PARTS_IN_FLIGHT, storage.max_concurrency)
    sink = PartSink(storage.multipart_chunksize, in_flight + 1)

    def produce() -> None:
        try:
            write_archive(result_dir, sink, digest=False)  # type: ignore[arg-type]
            sink.finish()
        except BaseException as exc:  # handed to the uploader, which raises it
            sink.fail(exc)

    producer = threading.Thread(target=produce, name="pbp-archive", daemon=True)
    producer.start()
    try:
        stored, version = upload_stream(
            client,
            target,
            bucket,
            key,
            sink,
            threshold=storage.multipart_threshold,
            in_flight=in_flight,
            content_type="application/gzip",
        )
    finally:
        sink.close()
        producer.join()
        sink.unmap()
    logger.info("archive s3://%s/%s: %d bytes, checksum %s", bucket, key, sink.size, stored)
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
    small: list[tuple[Path, str]] = []
    large: list[tuple[Path, str]] = []
    for path in files:
        size = path.stat().st_size
        (small if size < storage.multipart_threshold else large).append(
            (path, prefix + path.relative_to(result_dir).as_posix())
        )
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
