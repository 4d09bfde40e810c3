"""S3 publisher and S3 input source against the real MinIO."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect_aws import MinIOCredentials

from prefect_bacalhau_publish.archive import write_archive
from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import ChecksumMismatchError, FetchError, S3PublishError
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.sources import fetch_source
from prefect_bacalhau_publish.specs import (
    ExecutionContext,
    InputSource,
    PublishedResult,
    PublisherSpec,
    S3Params,
    SourceSpec,
)
from prefect_bacalhau_publish.testing import MinioServer

CTX = ExecutionContext(
    job_id="abc123",
    execution_id="e-42",
    node_id="n-node1",
    published_at=datetime(2023, 9, 26, 14, 5, 30, tzinfo=UTC),
)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root → bytes (files) or None (folders)."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = path.read_bytes() if path.is_file() else None
    return out


def s3_spec(bucket: str, key: str, **extra: Any) -> PublisherSpec:
    return PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": key, **extra}})


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_gzip_publish_single_part(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    result = publish_to(
        result_dir, s3_spec(bucket, "out/{jobID}/{date}-{time}/{executionID}-{nodeID}"), CTX, s3=s3_storage
    )
    params = result.params
    assert isinstance(params, S3Params)
    assert params.key == "out/abc123/20230926-140530/e-42-n-node1.tar.gz"
    assert params.bucket == bucket
    assert params.endpoint == s3_storage.endpoint_url
    assert params.region == "us-east-1"
    assert params.version_id is None  # unversioned bucket
    body = s3_client.get_object(Bucket=bucket, Key=params.key)["Body"].read()
    assert params.checksum_sha256 == b64sha(body)
    expected = io.BytesIO()
    info = write_archive(result_dir, expected)
    assert hashlib.sha256(body).hexdigest() == info.sha256 == hashlib.sha256(expected.getvalue()).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        names = archive.getnames()
    assert {
        "stdout",
        "stderr",
        "exitCode",
        "outputs/data.csv",
        "outputs/.hidden",
        "outputs/nested/blob.bin",
    } <= set(names)
    dumped = result.to_bacalhau()
    assert set(dumped["Params"]) == {"Bucket", "Key", "Region", "Endpoint", "ChecksumSHA256"}


def test_gzip_publish_multipart_versioned(
    tmp_path: Path, minio: MinioServer, versioned_bucket: str, s3_client: Any
) -> None:
    storage = S3Storage(
        credentials=MinIOCredentials(minio_root_user=minio.user, minio_root_password=minio.password),
        endpoint_url=minio.endpoint,
        multipart_threshold=5 * 1024 * 1024,
        multipart_chunksize=5 * 1024 * 1024,
    )
    root = tmp_path / "big"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "random.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    result = publish_to(root, s3_spec(versioned_bucket, "big/{executionID}"), CTX, s3=storage)
    params = result.params
    assert isinstance(params, S3Params)
    assert params.version_id
    assert params.checksum_sha256 is not None and params.checksum_sha256.endswith("-3")
    # The composite checksum is SHA-256 over the parts' SHA-256 digests, as S3 defines it.
    body = s3_client.get_object(Bucket=versioned_bucket, Key=params.key)["Body"].read()
    part = 5 * 1024 * 1024
    digests = b"".join(hashlib.sha256(body[i : i + part]).digest() for i in range(0, len(body), part))
    assert params.checksum_sha256 == f"{b64sha(digests)}-3"
    # and the chain fetches and verifies it (composite verification path)
    dest = tmp_path / "fetched"
    fetch_source(result.to_input_source("/inputs/big").source, dest, s3=storage)
    assert (dest / "outputs" / "random.bin").read_bytes() == (root / "outputs" / "random.bin").read_bytes()


def test_plain_publish_and_prefix_input(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    result = publish_to(result_dir, s3_spec(bucket, "plain/{jobID}", encoding="plain"), CTX, s3=s3_storage)
    params = result.params
    assert isinstance(params, S3Params)
    assert params.key == "plain/abc123/"
    assert params.version_id is None
    manifest = s3_client.get_object(Bucket=bucket, Key="plain/abc123.manifest.json")["Body"].read()
    assert params.checksum_sha256 == b64sha(manifest)  # the manifest's, beside the prefix
    listed = sorted(
        o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="plain/abc123/")["Contents"]
    )
    assert listed == [
        "plain/abc123/exitCode",
        "plain/abc123/outputs/.hidden",
        "plain/abc123/outputs/data.csv",
        "plain/abc123/outputs/nested/blob.bin",
        "plain/abc123/stderr",
        "plain/abc123/stdout",
    ]
    head = s3_client.head_object(Bucket=bucket, Key="plain/abc123/stdout", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == b64sha((result_dir / "stdout").read_bytes())
    source = result.to_input_source("/inputs/prev")
    assert source.source.params.extract is None  # type: ignore[attr-defined]
    dest = tmp_path / "in"
    fetch_source(source.source, dest, s3=s3_storage)
    assert tree(dest) == tree(result_dir)


def test_legacy_compress_false_is_plain(result_dir: Path, s3_storage: S3Storage, bucket: str) -> None:
    spec = PublisherSpec.model_validate(
        {"type": "s3", "params": {"bucket": bucket, "key": "legacy", "Compress": False}}
    )
    result = publish_to(result_dir, spec, CTX, s3=s3_storage)
    assert result.params.key == "legacy/"  # type: ignore[attr-defined]


def test_chain_extract_round_trip(
    result_dir: Path, s3_storage: S3Storage, versioned_bucket: str, tmp_path: Path
) -> None:
    result = publish_to(result_dir, s3_spec(versioned_bucket, "chain/{jobID}"), CTX, s3=s3_storage)
    source = result.to_input_source("/inputs/prev")
    dumped = source.to_bacalhau()
    assert dumped["Source"]["Params"]["Extract"] is True
    assert dumped["Target"] == "/inputs/prev"
    dest = tmp_path / "in"
    fetch_source(InputSource.model_validate(dumped).source, dest, s3=s3_storage)
    assert tree(dest) == tree(result_dir)


def test_object_input_arrives_as_file(
    result_dir: Path, s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    result = publish_to(result_dir, s3_spec(bucket, "obj/{jobID}"), CTX, s3=s3_storage)
    params = result.params
    assert isinstance(params, S3Params)
    source = SourceSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": params.key}})
    dest = tmp_path / "in"
    fetch_source(source, dest, s3=s3_storage)
    assert [p.name for p in dest.iterdir()] == ["abc123.tar.gz"]
    assert b64sha((dest / "abc123.tar.gz").read_bytes()) == params.checksum_sha256


def test_prefix_with_star_and_filter(
    s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    for key in ("data/run1/a.csv", "data/run1/b.txt", "data/run2/c.csv", "other/x.csv"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    source = SourceSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "data/run*", "Filter": r"\.csv$"}}
    )
    dest = tmp_path / "in"
    fetch_source(source, dest, s3=s3_storage)
    assert tree(dest) == {
        "run1": None,
        "run1/a.csv": b"data/run1/a.csv",
        "run2": None,
        "run2/c.csv": b"data/run2/c.csv",
    }


def test_version_pinning_after_overwrite(
    result_dir: Path, s3_storage: S3Storage, versioned_bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    result = publish_to(result_dir, s3_spec(versioned_bucket, "pinned"), CTX, s3=s3_storage)
    params = result.params
    assert isinstance(params, S3Params)
    s3_client.put_object(Bucket=versioned_bucket, Key=params.key, Body=b"overwritten by someone else")
    dest = tmp_path / "in"
    fetch_source(result.to_input_source("/x").source, dest, s3=s3_storage)
    assert tree(dest) == tree(result_dir)


def test_checksum_mismatch_refused(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    result = publish_to(result_dir, s3_spec(bucket, "tampered"), CTX, s3=s3_storage)
    params = result.params
    assert isinstance(params, S3Params)
    s3_client.put_object(Bucket=bucket, Key=params.key, Body=b"tampered", ChecksumAlgorithm="SHA256")
    dest = tmp_path / "in"
    with pytest.raises(ChecksumMismatchError) as info:
        fetch_source(result.to_input_source("/x").source, dest, s3=s3_storage)
    got = b64sha(b"tampered")
    assert str(info.value) == (
        f"checksum mismatch for s3://{bucket}/{params.key}, expected {params.checksum_sha256}, got {got}"
    )
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["result"]  # no staging folder left behind


def test_checksum_mismatch_with_no_checksum_at_all_says_so(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    result = publish_to(result_dir, s3_spec(bucket, "tampered"), CTX, s3=s3_storage)
    s3_client.put_object(Bucket=bucket, Key=result.params.key, Body=b"tampered")  # type: ignore[union-attr]
    with pytest.raises(ChecksumMismatchError, match=r", got none \(the object carries no SHA-256 checksum"):
        fetch_source(result.to_input_source("/x").source, tmp_path / "in", s3=s3_storage)
    assert not (tmp_path / "in").exists()


def test_missing_bucket_clear_error(result_dir: Path, s3_storage: S3Storage) -> None:
    with pytest.raises(S3PublishError, match="bucket 'no-such-bucket' does not exist"):
        publish_to(result_dir, s3_spec("no-such-bucket", "k"), CTX, s3=s3_storage)


def test_wrong_credentials_clear_error_without_secret(
    result_dir: Path, minio: MinioServer, bucket: str
) -> None:
    secret = "not-the-password-4f1c2e"
    storage = S3Storage(
        credentials=MinIOCredentials(minio_root_user=minio.user, minio_root_password=secret),
        endpoint_url=minio.endpoint,
    )
    with pytest.raises(S3PublishError, match="access denied") as info:
        publish_to(result_dir, s3_spec(bucket, "k"), CTX, s3=storage)
    assert secret not in str(info.value)


def test_unreachable_endpoint_clear_error(result_dir: Path, minio: MinioServer) -> None:
    from prefect_bacalhau_publish.testing import free_port

    storage = S3Storage(
        credentials=MinIOCredentials(minio_root_user=minio.user, minio_root_password=minio.password),
        endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    with pytest.raises(S3PublishError, match="cannot reach the S3 endpoint"):
        publish_to(result_dir, s3_spec("bkt", "k"), CTX, s3=storage)


def test_missing_object_clear_error(s3_storage: S3Storage, bucket: str, tmp_path: Path) -> None:
    source = SourceSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": "nothing-here"}})
    with pytest.raises(FetchError, match="no such object"):
        fetch_source(source, tmp_path / "in", s3=s3_storage)
    assert not (tmp_path / "in").exists()


def test_failed_archive_leaves_no_object(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    root = tmp_path / "r"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "escape").symlink_to("/etc/passwd")
    with pytest.raises(Exception, match="escape"):
        publish_to(root, s3_spec(bucket, "broken"), CTX, s3=s3_storage)
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_published_result_round_trips_as_bacalhau_json(
    result_dir: Path, s3_storage: S3Storage, versioned_bucket: str
) -> None:
    result = publish_to(result_dir, s3_spec(versioned_bucket, "rt"), CTX, s3=s3_storage)
    again = PublishedResult.model_validate(result.to_bacalhau())
    assert again == result
    assert set(result.to_bacalhau()["Params"]) == {
        "Bucket",
        "Key",
        "Region",
        "Endpoint",
        "VersionID",
        "ChecksumSHA256",
    }


@pytest.mark.parametrize("size", [1024, 12 * 1024 * 1024])
def test_get_through_presigned_url(tmp_path: Path, minio: MinioServer, bucket: str, size: int) -> None:
    from prefect_bacalhau_publish.tasks import get_result

    storage = S3Storage(
        credentials=MinIOCredentials(minio_root_user=minio.user, minio_root_password=minio.password),
        endpoint_url=minio.endpoint,
        multipart_threshold=5 * 1024 * 1024,
        multipart_chunksize=5 * 1024 * 1024,
    )
    root = tmp_path / "r"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "data.bin").write_bytes(os.urandom(size))
    result = publish_to(root, s3_spec(bucket, "presigned/{executionID}"), CTX, s3=storage)
    dest = get_result.fn(result, tmp_path / "got", s3=storage, presigned=True)
    assert tree(dest) == tree(root)


def test_s3_presigned_spec_needs_no_credentials(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    from prefect_bacalhau_publish.presign import presign

    result = publish_to(result_dir, s3_spec(bucket, "nocreds"), CTX, s3=s3_storage)
    assert isinstance(result.params, S3Params)
    signed = PublishedResult.model_validate(
        {"Type": "s3PreSigned", "Params": presign(result.params, s3_storage)}
    )
    assert signed.to_bacalhau()["Params"]["PreSignedURL"].startswith(s3_storage.endpoint_url or "")
    dest = tmp_path / "got"
    fetch_source(signed.to_input_source("/x").source, dest, s3=S3Storage(endpoint_url="http://127.0.0.1:9"))
    assert tree(dest) == tree(result_dir)
    # a tampered object behind a still-valid URL is refused
    s3_client.put_object(Bucket=bucket, Key=result.params.key, Body=b"tampered")
    with pytest.raises(ChecksumMismatchError):
        fetch_source(signed.to_input_source("/x").source, tmp_path / "again", s3=None)
    assert not (tmp_path / "again").exists()


def test_transfers_report_progress(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    from prefect_bacalhau_publish.progress import listening

    sent: list[int] = []
    with listening(sent.append):
        result = publish_to(result_dir, s3_spec(bucket, "progress"), CTX, s3=s3_storage)
    # a publish counts the bytes read from the result folder, a fetch the bytes received
    assert sum(sent) == sum(p.stat().st_size for p in result_dir.rglob("*") if p.is_file())
    size = s3_client.head_object(Bucket=bucket, Key=result.params.key)["ContentLength"]  # type: ignore[attr-defined]
    received: list[int] = []
    with listening(received.append):
        fetch_source(result.to_input_source("/x").source, tmp_path / "in", s3=s3_storage)
    assert sum(received) == size
    fetch_source(result.to_input_source("/x").source, tmp_path / "quiet", s3=s3_storage)
    assert sum(received) == size  # a listener hears nothing once its block has ended


def test_plain_publish_mixes_small_and_multipart_files(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    root = tmp_path / "r"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "big.bin").write_bytes(os.urandom(s3_storage.multipart_threshold + 1))
    (root / "outputs" / "small.txt").write_text("small\n")
    result = publish_to(root, s3_spec(bucket, "mixed", encoding="plain"), CTX, s3=s3_storage)
    head = s3_client.head_object(Bucket=bucket, Key="mixed/outputs/big.bin", ChecksumMode="ENABLED")
    big = (root / "outputs" / "big.bin").read_bytes()
    assert head["ChecksumSHA256"] == f"{b64sha(hashlib.sha256(big).digest())}-1"  # one multipart part
    dest = tmp_path / "in"
    fetch_source(result.to_input_source("/x").source, dest, s3=s3_storage)
    assert tree(dest) == tree(root)
