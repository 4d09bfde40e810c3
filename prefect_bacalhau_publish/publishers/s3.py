"""The S3 publisher: one streamed tar.gz object (gzip, the default) or one object per file (plain), plus
the plain result's manifest beside its prefix, whose SHA-256 the spec records (`manifest`).

Publishing needs only `s3:PutObject` on the bucket's objects: the checksum and version come from the
PUT / CompleteMultipartUpload responses. After a failure, a multipart upload is aborted by its id
(`s3:AbortMultipartUpload`) with a client that waits 10 s per try (`get_client(quick=True)`); when that is
not allowed it is named in one warning and left to the bucket's lifecycle rule, and when the store cannot be
reached or does not answer in time (MinIO without its write quorum holds an abort on its lock) its id goes
into `journal` for the next publish.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import journal, progress
from ..archive import write_archive
from ..checksums import b64
from ..errors import S3PublishError
from ..manifest import Manifest, manifest_key
from ..naming import render_key
from ..s3access import S3Access, check_bucket, check_key, s3_access
from ..s3errors import error_code, is_client_error, is_denied, wrapped
from ..specs import ExecutionContext, PublishedResult, PublisherSpec
from .s3_plain import obstore_can_carry, plan_tree, put_object, upload_files
from .s3_stream import PartSink, upload_stream

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from ..blocks import S3Target
    from .fanout import ArchiveWriter

logger = logging.getLogger("prefect_bacalhau_publish.s3")

__all__ = ["publish"]


def publish(
    result_dir: Path,
    spec: PublisherSpec,
    context: ExecutionContext,
    target: S3Target | None,
    *,
    archive: ArchiveWriter | None = None,
) -> PublishedResult:
    """Publish `result_dir` as Bacalhau's S3 publisher does and return the published result spec.

    `archive` writes the gzip encoding's tar.gz instead of `write_archive` (`fanout`: one archive, several
    targets)."""
    params = spec.s3
    key = render_key(params.key, context=context, archive=params.archived)
    check_bucket(params.bucket)
    check_key(key)
    storage = s3_access(target)
    endpoint, region = storage.resolve(params.endpoint, params.region)
    client = partial(storage.get_client, params.endpoint, params.region)  # each call: the same client
    cleaner = partial(storage.get_client, params.endpoint, params.region, quick=True)  # built when needed
    out: dict[str, Any] = {"Bucket": params.bucket, "Key": key, "Region": region, "Endpoint": endpoint}
    started = time.perf_counter()
    _abort_pending(cleaner, endpoint, params.bucket)
    try:
        if params.archived:
            uploaded = _upload_archive(
                client(), cleaner, storage, result_dir, params.bucket, key, endpoint, archive
            )
            out.update(uploaded)
        else:
            count, checksum = _upload_plain(client, storage, result_dir, params.bucket, key, endpoint, region)
            out["ChecksumSHA256"] = checksum
            logger.info("published %d files to s3://%s/%s", count, params.bucket, key)
    except Exception as exc:
        if not is_client_error(exc):
            raise
        raise wrapped(
            S3PublishError, exc, action="publish to", bucket=params.bucket, key=key, endpoint=endpoint
        ) from None
    logger.info("published s3://%s/%s in %.2fs", params.bucket, key, time.perf_counter() - started)
    return PublishedResult.model_validate({"Type": "s3", "Params": out})


def _abort(client: S3Client, endpoint: str | None, bucket: str, key: str, upload_id: str) -> None:
    """Abort one multipart upload by its id; journal it only when the store could not be reached."""
    where = f"multipart upload {upload_id} of s3://{bucket}/{key}"
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError) as exc:
        if error_code(exc) == "NoSuchUpload":
            pass  # already gone (aborted, or completed after all)
        elif is_denied(exc):
            logger.warning(
                "could not abort %s: these credentials lack s3:AbortMultipartUpload; its parts stay in the "
                "bucket until a lifecycle rule (AbortIncompleteMultipartUpload) or an account allowed to "
                "abort removes them",
                where,
            )
        else:
            logger.warning(
                "could not abort %s now (%s); the next publish to bucket %r at %s will abort it",
                where,
                type(exc).__name__,
                bucket,
                endpoint or "AWS",
            )
            journal.remember(endpoint, bucket, key, upload_id)
            return
    journal.forget(endpoint, bucket, upload_id)


def _abort_pending(cleaner: Callable[[], S3Client], endpoint: str | None, bucket: str) -> None:
    """Abort what an earlier failed publish to this bucket could not."""
    for key, upload_id in journal.pending(endpoint, bucket):
        _abort(cleaner(), endpoint, bucket, key, upload_id)


_PARTS_IN_FLIGHT = 2
"""Parts sent at once (with one more being filled): enough to keep a loopback store and both cores busy."""


def _upload_archive(
    client: S3Client,
    cleaner: Callable[[], S3Client],
    storage: S3Access,
    result_dir: Path,
    bucket: str,
    key: str,
    endpoint: str | None,
    archive: ArchiveWriter | None = None,
) -> dict[str, Any]:
    """Stream the deterministic tar.gz to S3 while it is written, and verify the checksum S3 stored.

    An archive smaller than `multipart_threshold` goes up in one PUT (its response carries the checksum and
    version); a larger one as a multipart upload of `multipart_chunksize` parts, `_PARTS_IN_FLIGHT` at a
    time, with memory fixed at `(_PARTS_IN_FLIGHT + 1) × multipart_chunksize` whatever the result's size.
    """
    in_flight = min(_PARTS_IN_FLIGHT, storage.max_concurrency)
    sink = PartSink(storage.multipart_chunksize, in_flight + 1)
    write = archive if archive is not None else partial(write_archive, result_dir)

    def produce() -> None:
        try:
            write(sink, digest=False)  # type: ignore[arg-type]
            sink.finish()
        except BaseException as exc:  # handed to the uploader, which raises it
            sink.fail(exc)

    producer = progress.thread(produce, "pbp-archive")  # in this context: its reads are this publish's
    producer.start()
    upload_ids: list[str] = []
    try:
        stored, version = upload_stream(
            client,
            bucket,
            key,
            sink,
            threshold=storage.multipart_threshold,
            in_flight=in_flight,
            content_type="application/gzip",
            started=upload_ids.append,
        )
    except BaseException:
        for upload_id in upload_ids:
            _abort(cleaner(), endpoint, bucket, key, upload_id)
        raise
    finally:
        sink.close()
        producer.join()
        sink.unmap()
    logger.info("archive s3://%s/%s: %d bytes, checksum %s", bucket, key, sink.size, stored)
    out: dict[str, Any] = {"ChecksumSHA256": stored}
    if version and version != "null":
        out["VersionID"] = version
    return out


_EMPTY_SHA256 = b64(hashlib.sha256(b"").digest())


def _put_markers(client: S3Client, bucket: str, markers: list[str], done: list[str]) -> None:
    """Zero-byte `folder/` objects for the result's empty folders (only `s3:PutObject`)."""
    for key in markers:
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=b"",
            ContentType="application/x-directory",
            ChecksumSHA256=_EMPTY_SHA256,
        )
        done.append(key)


def _upload_plain(
    client: Callable[[], S3Client],
    storage: S3Access,
    result_dir: Path,
    bucket: str,
    prefix: str,
    endpoint: str | None,
    region: str | None,
) -> tuple[int, str]:
    """Upload every file to `prefix + relative/path` and a marker for each empty folder (`s3_plain`), then
    the result's manifest beside the prefix (`manifest`); return the file count and the manifest's SHA-256,
    which S3 checked on arrival. Anything that cannot be published is refused before the first upload. On
    failure, the objects already uploaded are deleted again so no partial result is left behind (that
    needs `s3:DeleteObject`). Files and the manifest go through obstore; boto3's `client()` is built only
    for folder markers, keys obstore cannot carry, or that clean-up (its import and client cost a CLI
    publish 0.3 s)."""
    if not result_dir.is_dir():
        raise S3PublishError(f"result folder {result_dir} does not exist or is not a folder")
    tree = plan_tree(result_dir, prefix)
    files = tree.files
    done: list[str] = []
    try:
        store = storage.get_store(bucket, endpoint, region)
        entries = upload_files(storage, store, client, bucket, files, done=done, prefix=prefix)
        if tree.markers:
            _put_markers(client(), bucket, tree.markers, done)
        folders = tuple(marker[len(prefix) : -1] for marker in tree.markers)
        body = Manifest(prefix, tuple(entries), folders).to_bytes()
        checksum = b64(hashlib.sha256(body).digest())
        key = manifest_key(prefix)
        if obstore_can_carry(key):  # obstore sends the body's SHA-256, which S3 checks on arrival
            put_object(store, key, body, attributes={"Content-Type": "application/json"})
        else:
            client().put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="application/json", ChecksumSHA256=checksum
            )
    except BaseException:
        _remove(client, bucket, prefix, done)
        raise
    return len(files), checksum


def _remove(client: Callable[[], S3Client], bucket: str, prefix: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        try:
            client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})  # type: ignore[typeddict-item]
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "could not remove %d objects a failed publish left under s3://%s/%s (%s): delete them by "
                "hand, or publish again to the same Key to overwrite them",
                len(batch),
                bucket,
                prefix,
                "these credentials lack s3:DeleteObject" if is_denied(exc) else type(exc).__name__,
            )
