"""The seed's IAM statement as a promise, on MinIO users made through its admin API: publishing needs only
`s3:PutObject` on the bucket's objects, fetching an archive only `s3:GetObject`; a plain prefix also needs
`s3:ListBucket`, and says so."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish import journal
from prefect_bacalhau_publish.errors import FetchError, PublishError
from prefect_bacalhau_publish.publishers import publish_to, s3
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec, S3Params
from prefect_bacalhau_publish.tasks import get_result
from prefect_bacalhau_publish.testing import MinioServer

MiB = 1024 * 1024


def spec(bucket: str, encoding: str = "gzip") -> PublisherSpec:
    return PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "lp/{executionID}", "Encoding": encoding}}
    )


def user(minio: MinioServer, actions: list[str], bucket: str, **settings: Any) -> Any:
    storage = minio.limited_user(f"u{uuid.uuid4().hex[:10]}", actions, bucket)
    return storage.model_copy(update=settings)


@pytest.fixture()
def results(tmp_path: Path) -> dict[str, Path]:
    """A small result (one PUT), a large one (multipart at 5 MiB parts) and a plain one with every kind of file."""
    made: dict[str, Path] = {}
    for name, size in (("small", 1000), ("large", 13 * MiB)):
        root = made[name] = tmp_path / name
        (root / "outputs").mkdir(parents=True)
        (root / "stdout").write_text(f"{name}\n")
        (root / "outputs" / "data.bin").write_bytes(os.urandom(size))
    root = made["plain"] = tmp_path / "plain"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "big.bin").write_bytes(os.urandom(6 * MiB))  # multipart through obstore
    (root / "outputs" / "tab\tname.txt").write_text("boto3 carries this key\n")
    (root / "outputs" / "small.csv").write_text("a,b\n")
    return made


def test_put_object_alone_publishes_every_kind_of_result(
    minio: MinioServer,
    versioned_bucket: str,
    s3_client: Any,
    results: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = user(
        minio, ["s3:PutObject"], versioned_bucket, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB
    )
    caplog.set_level(logging.INFO, logger="prefect_bacalhau_publish")
    for name in ("small", "large"):
        published = publish_to(results[name], spec(versioned_bucket), ExecutionContext.new(), s3=storage)
        params = published.params
        assert isinstance(params, S3Params)
        head = s3_client.head_object(Bucket=versioned_bucket, Key=params.key, ChecksumMode="ENABLED")
        assert params.checksum_sha256 == head["ChecksumSHA256"], name
        assert params.version_id == head["VersionId"], name
        assert params.checksum_sha256.endswith("-3") == (name == "large")
    plain = publish_to(results["plain"], spec(versioned_bucket, "plain"), ExecutionContext.new(), s3=storage)
    prefix = plain.params.key  # type: ignore[union-attr]
    listed = s3_client.list_objects_v2(Bucket=versioned_bucket, Prefix=prefix)["Contents"]
    assert sorted(o["Key"][len(prefix) :] for o in listed) == [
        "outputs/big.bin",
        "outputs/small.csv",
        "outputs/tab\tname.txt",
    ]
    assert "could not" not in caplog.text and "denied" not in caplog.text


def test_failed_multipart_names_the_upload_and_the_permission_once(
    tmp_path: Path,
    minio: MinioServer,
    bucket: str,
    s3_client: Any,
    results: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storage = user(minio, ["s3:PutObject"], bucket, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)

    def failing_archive(src: Path, out: Any, **kwargs: Any) -> None:
        out.write(os.urandom(12 * MiB))
        while not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            pass  # the producer waits for the upload to exist (parts are under way)
        raise PublishError("cannot read the result: Input/output error")

    monkeypatch.setattr(s3, "write_archive", failing_archive)
    with pytest.raises(PublishError, match="Input/output error"):
        publish_to(results["small"], spec(bucket), ExecutionContext.new(), s3=storage)
    uploads = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert len(uploads) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert uploads[0]["UploadId"] in warnings[0] and "s3:AbortMultipartUpload" in warnings[0]
    assert journal.pending(minio.endpoint, bucket) == []  # not retried on every later publish
    monkeypatch.undo()
    caplog.clear()
    publish_to(results["small"], spec(bucket), ExecutionContext.new(), s3=storage)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    s3_client.abort_multipart_upload(Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])


@pytest.mark.parametrize("presigned", [False, True])
def test_get_object_alone_fetches_archives(
    tmp_path: Path,
    minio: MinioServer,
    versioned_bucket: str,
    results: dict[str, Path],
    presigned: bool,
) -> None:
    publisher = minio.storage(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    reader = user(minio, ["s3:GetObject"], versioned_bucket)
    for name in ("small", "large"):
        published = publish_to(results[name], spec(versioned_bucket), ExecutionContext.new(), s3=publisher)
        dest = tmp_path / f"got-{name}-{presigned}"
        get_result.fn(published, dest, s3=reader, presigned=presigned)
        assert (dest / "outputs" / "data.bin").read_bytes() == (
            results[name] / "outputs" / "data.bin"
        ).read_bytes()
        assert (dest / "stdout").read_text() == f"{name}\n"


def test_plain_result_with_its_manifest_needs_get_object_alone(
    tmp_path: Path, minio: MinioServer, bucket: str, results: dict[str, Path]
) -> None:
    published = publish_to(
        results["plain"], spec(bucket, "plain"), ExecutionContext.new(), s3=minio.storage()
    )
    reader = user(minio, ["s3:GetObject"], bucket)
    get_result.fn(published, tmp_path / "got", s3=reader)
    assert (tmp_path / "got" / "outputs" / "small.csv").read_text() == "a,b\n"
    assert (tmp_path / "got" / "outputs" / "tab\tname.txt").read_text() == "boto3 carries this key\n"
    assert (tmp_path / "got" / "outputs" / "big.bin").read_bytes() == (
        results["plain"] / "outputs" / "big.bin"
    ).read_bytes()


def test_plain_prefix_without_list_bucket_says_which_permission(
    tmp_path: Path, minio: MinioServer, bucket: str, results: dict[str, Path]
) -> None:
    """A prefix with no manifest (published elsewhere: no ChecksumSHA256 in its spec) must be listed."""
    published = publish_to(
        results["plain"], spec(bucket, "plain"), ExecutionContext.new(), s3=minio.storage()
    )
    foreign = PublishedResult.model_validate(
        {"Type": "s3", "Params": {**published.params.model_dump(by_alias=True), "ChecksumSHA256": None}}
    )
    reader = user(minio, ["s3:GetObject"], bucket)
    with pytest.raises(FetchError, match=rf"needs s3:ListBucket on bucket '{bucket}'"):
        get_result.fn(foreign, tmp_path / "got", s3=reader)
    assert not (tmp_path / "got").exists()
    lister = minio.limited_user(f"l{uuid.uuid4().hex[:10]}", ["s3:ListBucket"], bucket, on_bucket=True)
    both = minio.limited_user(f"g{uuid.uuid4().hex[:10]}", ["s3:GetObject"], bucket)
    admin_policy_for_both(minio, both, lister)
    get_result.fn(foreign, tmp_path / "got", s3=both)
    assert (tmp_path / "got" / "outputs" / "small.csv").read_text() == "a,b\n"


def admin_policy_for_both(minio: MinioServer, target: Any, lister: Any) -> None:
    """Attach the lister's policy to `target`'s user too, so it holds GetObject and ListBucket."""
    from minio.credentials.providers import StaticProvider
    from minio.minioadmin import MinioAdmin

    admin = MinioAdmin(
        endpoint=f"127.0.0.1:{minio.port}",
        credentials=StaticProvider(minio.user, minio.password),
        secure=False,
    )
    name = target.credentials.aws_access_key_id
    admin.attach_policy([lister.credentials.aws_access_key_id], user=name)
