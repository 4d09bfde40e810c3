"""MinIO behind TLS with a private CA: the credentials block's `aws_client_parameters` (verify_cert_path,
verify) reach every S3 path: boto3 (archives, gets), obstore (plain results) and presigned downloads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect_aws import MinIOCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import FetchError, S3PublishError
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec, S3Params
from prefect_bacalhau_publish.tasks import get_result
from prefect_bacalhau_publish.testing import MinioServer

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def tls_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    server = MinioServer(tmp_path_factory.mktemp("minio-tls") / "data").with_tls().start()
    try:
        client: Any = server.client()
        client.create_bucket(Bucket="tls")
        yield server
    finally:
        server.stop()


def spec(encoding: str) -> PublisherSpec:
    return PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": "tls", "Key": "r/{executionID}", "Encoding": encoding}}
    )


def storage_with(server: MinioServer, parameters: AwsClientParameters, **settings: Any) -> S3Storage:
    credentials = MinIOCredentials(
        minio_root_user=server.user,
        minio_root_password=server.password,
        aws_client_parameters=parameters,
    )
    return S3Storage(
        credentials=credentials, endpoint_url=server.endpoint, region_name="us-east-1", **settings
    )


@pytest.mark.parametrize("encoding", ["gzip", "plain"])
def test_private_ca_publish_and_get(
    tmp_path: Path, tls_minio: MinioServer, result_dir: Path, encoding: str
) -> None:
    assert tls_minio.endpoint.startswith("https://127.0.0.1:")
    assert tls_minio.ca_file is not None
    (result_dir / "outputs" / "big.bin").write_bytes(os.urandom(11 * MiB))  # multipart on both paths
    storage = storage_with(
        tls_minio,
        AwsClientParameters(verify_cert_path=tls_minio.ca_file),
        multipart_threshold=5 * MiB,
        multipart_chunksize=5 * MiB,
    )
    published = publish_to(result_dir, spec(encoding), ExecutionContext.new(), s3=storage)
    assert isinstance(published.params, S3Params) and published.params.endpoint == tls_minio.endpoint
    modes = [False, True] if encoding == "gzip" else [False]
    for presigned in modes:
        dest = tmp_path / f"got-{presigned}"
        get_result.fn(published, dest, s3=storage, presigned=presigned)
        for name in ("outputs/big.bin", "outputs/nested/blob.bin", "stdout"):
            assert (dest / name).read_bytes() == (result_dir / name).read_bytes(), name


def test_verify_false_trusts_any_certificate(
    tmp_path: Path, tls_minio: MinioServer, result_dir: Path
) -> None:
    storage = storage_with(tls_minio, AwsClientParameters(verify=False))
    for encoding in ("gzip", "plain"):
        published = publish_to(result_dir, spec(encoding), ExecutionContext.new(), s3=storage)
        get_result.fn(published, tmp_path / encoding, s3=storage)
        assert (tmp_path / encoding / "stdout").read_text() == "hello from the job\n"


@pytest.mark.parametrize("encoding", ["gzip", "plain"])
def test_unknown_ca_is_refused_clearly(tls_minio: MinioServer, result_dir: Path, encoding: str) -> None:
    storage = storage_with(tls_minio, AwsClientParameters())
    with pytest.raises(
        S3PublishError,
        match=r"publish to s3://tls/r/.* failed: the TLS certificate of the S3 endpoint at https://127\.0\.0\.1:\d+ is not trusted: give the CA bundle as verify_cert_path",
    ):
        publish_to(result_dir, spec(encoding), ExecutionContext.new(), s3=storage)


def test_presigned_get_without_the_ca_is_refused_clearly(
    tmp_path: Path, tls_minio: MinioServer, result_dir: Path
) -> None:
    trusted = storage_with(tls_minio, AwsClientParameters(verify_cert_path=tls_minio.ca_file))
    published = publish_to(result_dir, spec("gzip"), ExecutionContext.new(), s3=trusted)
    from prefect_bacalhau_publish.presign import presign

    signed = presign(published.params, trusted)  # type: ignore[arg-type]
    as_spec = {"Type": "s3PreSigned", "Params": signed.model_dump(by_alias=True, exclude_none=True)}
    with pytest.raises(FetchError, match=r"presigned URL failed: SSLError: .*certificate verify failed"):
        get_result.fn(as_spec, tmp_path / "got")
    assert not (tmp_path / "got").exists()


def test_an_s3_bucket_block_stands_for_s3_storage(
    tmp_path: Path, tls_minio: MinioServer, result_dir: Path
) -> None:
    credentials = MinIOCredentials(
        minio_root_user=tls_minio.user,
        minio_root_password=tls_minio.password,
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(
            endpoint_url=tls_minio.endpoint, verify_cert_path=tls_minio.ca_file
        ),
    )
    bucket_block = S3Bucket(bucket_name="tls", credentials=credentials)
    for target in (bucket_block, credentials):
        published = publish_to(result_dir, spec("gzip"), ExecutionContext.new(), s3=target)
        assert published.params.endpoint == tls_minio.endpoint  # type: ignore[union-attr]
        dest = tmp_path / type(target).__name__
        get_result.fn(published, dest, s3=target, presigned=True)
        assert (dest / "outputs" / "data.csv").read_text() == "a,b\n1,2\n"
