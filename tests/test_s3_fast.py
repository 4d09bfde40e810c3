"""The lean small-object uploader (publishers/s3_fast.py) against the real MinIO."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, EndpointConnectionError
from prefect_aws import AwsCredentials, MinIOCredentials
from pydantic import SecretStr

from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import S3PublishError
from prefect_bacalhau_publish.publishers import s3_fast
from prefect_bacalhau_publish.publishers.s3_fast import FAST_MAX_BYTES, upload_small_files
from prefect_bacalhau_publish.s3errors import explain
from prefect_bacalhau_publish.testing import MinioServer, free_port


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def items_under(root: Path, prefix: str) -> list[tuple[Path, str]]:
    return [(p, prefix + p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]


def listed_keys(s3_client: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


def minio_storage(minio: MinioServer, password: str | None = None, endpoint: str | None = None) -> S3Storage:
    return S3Storage(
        credentials=MinIOCredentials(
            minio_root_user=minio.user, minio_root_password=SecretStr(password or minio.password)
        ),
        endpoint_url=endpoint or minio.endpoint,
        region_name="us-east-1",
    )


def boto3_message(storage: S3Storage, bucket: str, key: str) -> str:
    """What the boto3 path says for the same PUT, through the same `explain`."""
    try:
        storage.get_client().put_object(Bucket=bucket, Key=key, Body=b"x", ChecksumAlgorithm="SHA256")
    except (ClientError, EndpointConnectionError) as exc:
        return explain(exc, action="publish to", bucket=bucket, key=key, endpoint=storage.endpoint_url)
    raise AssertionError("the boto3 PUT succeeded")


def test_fast_path_is_taken_for_minio(s3_storage: S3Storage, bucket: str) -> None:
    target = s3_fast.fast_target(s3_storage.get_client(), s3_storage, bucket)
    assert target is not None
    assert (target.host, target.host_header) == ("127.0.0.1", s3_storage.endpoint_url.split("//")[1])  # type: ignore[union-attr]
    aws = S3Storage(credentials=s3_storage.credentials, region_name="us-east-1")
    assert s3_fast.fast_target(aws.get_client(), aws, bucket) is None  # AWS itself: boto3 does the work


def test_uploads_land_with_bytes_type_and_checksum(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    items = items_under(result_dir, "run/1/")
    done: list[str] = []
    returned = upload_small_files(s3_storage, None, None, bucket, items, concurrency=4, done=done)
    assert returned is done
    assert sorted(done) == sorted(key for _, key in items) == listed_keys(s3_client, bucket)
    types = {"run/1/outputs/data.csv": "text/csv"}
    for path, key in items:
        head = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        data = path.read_bytes()
        assert head["ChecksumSHA256"] == b64sha(data), key
        assert head["ContentType"] == types.get(key, "application/octet-stream"), key
        assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == data, key


NAMES = [
    "a b.txt",
    "plus+sign",
    "100%",
    "%41 not decoded",
    "what?x=1&y=2",
    "hash#tag",
    "ünïcødé 日本語.json",
    "tilde~semi;colon,comma",
    "eq=amp&at@dollar$",
    "quote'paren(1)[2]{3}*!",
    "colon:back`caret^pipe|",
    "emoji-🐟.bin",
]


def test_awkward_names_round_trip_to_exact_keys(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    root = tmp_path / "r"
    (root / "dir with space" / "ü").mkdir(parents=True)
    for index, name in enumerate(NAMES):
        (root / "dir with space" / "ü" / name).write_bytes(name.encode() * (index + 1))
    items = items_under(root, "pre fix+%/")
    upload_small_files(s3_storage, None, None, bucket, items)
    assert listed_keys(s3_client, bucket) == sorted(key for _, key in items)
    assert {key.rsplit("/", 1)[1] for _, key in items} == set(NAMES)
    for path, key in items:
        assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes(), key


def test_empty_file(tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any) -> None:
    (tmp_path / "stderr").write_bytes(b"")
    assert upload_small_files(s3_storage, None, None, bucket, [(tmp_path / "stderr", "e/stderr")]) == [
        "e/stderr"
    ]
    head = s3_client.head_object(Bucket=bucket, Key="e/stderr", ChecksumMode="ENABLED")
    assert head["ContentLength"] == 0
    assert head["ChecksumSHA256"] == b64sha(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_file_over_fast_limit_goes_through_boto3_with_checksum(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    big, small = tmp_path / "big.tar", tmp_path / "small.txt"
    big.write_bytes(os.urandom(FAST_MAX_BYTES + 1))
    small.write_bytes(b"small\n")
    done = upload_small_files(s3_storage, None, None, bucket, [(big, "m/big.tar"), (small, "m/small.txt")])
    assert sorted(done) == ["m/big.tar", "m/small.txt"]
    head = s3_client.head_object(Bucket=bucket, Key="m/big.tar", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == b64sha(big.read_bytes())
    assert head["ContentType"] == "application/x-tar"
    assert s3_client.get_object(Bucket=bucket, Key="m/big.tar")["Body"].read() == big.read_bytes()


def test_500_files_concurrently(tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any) -> None:
    root = tmp_path / "many"
    contents: dict[str, bytes] = {}
    for index in range(500):
        path = root / f"d{index % 25:02d}" / f"f{index:04d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(index * 7 % 9000)
        path.write_bytes(data)
        contents[f"many/{path.relative_to(root).as_posix()}"] = data
    items = items_under(root, "many/")
    done = upload_small_files(s3_storage, None, None, bucket, items, concurrency=16)
    assert len(done) == len(set(done)) == 500
    assert sorted(done) == sorted(contents)
    etags: dict[str, str] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        etags.update({o["Key"]: o["ETag"].strip('"') for o in page["Contents"]})
    assert etags == {key: hashlib.md5(data).hexdigest() for key, data in contents.items()}
    for key in sorted(contents)[::50]:
        head = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == b64sha(contents[key])


def test_missing_bucket_says_so_like_boto3(tmp_path: Path, s3_storage: S3Storage) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(S3PublishError, match="bucket 'no-such-bucket' does not exist") as info:
        upload_small_files(
            s3_storage, None, None, "no-such-bucket", [(tmp_path / "f", "k/f")], error_key="k/"
        )
    assert str(info.value) == boto3_message(s3_storage, "no-such-bucket", "k/")


@pytest.mark.parametrize("wrong", ["password", "user"])
def test_wrong_credentials_access_denied_without_secret(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any, wrong: str
) -> None:
    secret = "not-the-password-4f1c2e"
    storage = minio_storage(minio, password=secret) if wrong == "password" else minio_storage(minio)
    if wrong == "user":
        storage.credentials = MinIOCredentials(
            minio_root_user="nobody-7d3a", minio_root_password=SecretStr(secret)
        )
    (tmp_path / "f").write_text("x")
    done: list[str] = []
    with pytest.raises(S3PublishError, match="access denied") as info:
        upload_small_files(storage, None, None, bucket, [(tmp_path / "f", "k/f")], done=done)
    assert secret not in str(info.value) and secret not in str(info.value.__cause__)
    assert str(info.value) == boto3_message(storage, bucket, "k/f")
    assert done == [] and listed_keys(s3_client, bucket) == []


def test_unreachable_endpoint_cannot_reach_like_boto3(tmp_path: Path, minio: MinioServer) -> None:
    storage = minio_storage(minio, endpoint=f"http://127.0.0.1:{free_port()}")
    (tmp_path / "f").write_text("x")
    with pytest.raises(S3PublishError, match=r"cannot reach the S3 endpoint at http://127\.0\.0\.1:") as info:
        upload_small_files(storage, None, None, "b", [(tmp_path / "f", "k/f")], error_key="k/")
    assert str(info.value) == boto3_message(storage, "b", "k/")


def test_proxy_in_the_environment_is_not_bypassed(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    storage = minio_storage(minio)
    assert s3_fast.fast_target(storage.get_client(), storage, bucket) is None
    (tmp_path / "f").write_text("x")
    with pytest.raises(S3PublishError, match="proxy"):
        upload_small_files(storage, None, None, bucket, [(tmp_path / "f", "k/f")])
    assert listed_keys(s3_client, bucket) == []


def test_no_credentials_at_all(tmp_path: Path, minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage = S3Storage(endpoint_url=minio.endpoint, region_name="us-east-1")
    (tmp_path / "f").write_text("x")
    with pytest.raises(S3PublishError, match="no S3 credentials found"):
        upload_small_files(storage, None, None, "b", [(tmp_path / "f", "k/f")])


def test_session_token_credentials(tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any) -> None:
    import boto3

    sts = boto3.client(
        "sts",
        endpoint_url=minio.endpoint,
        aws_access_key_id=minio.user,
        aws_secret_access_key=minio.password,
        region_name="us-east-1",
    )
    temporary = sts.assume_role(RoleArn="arn:xxx:xxx:xxx:xxxx", RoleSessionName="pbp-test")["Credentials"]
    storage = S3Storage(
        credentials=AwsCredentials(
            aws_access_key_id=temporary["AccessKeyId"],
            aws_secret_access_key=temporary["SecretAccessKey"],
            aws_session_token=temporary["SessionToken"],
        ),
        endpoint_url=minio.endpoint,
        region_name="us-east-1",
    )
    target = s3_fast.fast_target(storage.get_client(), storage, bucket)
    assert target is not None and target.credentials.token == temporary["SessionToken"]
    (tmp_path / "f.txt").write_text("via a session token\n")
    assert upload_small_files(storage, None, None, bucket, [(tmp_path / "f.txt", "t/f.txt")]) == ["t/f.txt"]
    assert s3_client.get_object(Bucket=bucket, Key="t/f.txt")["Body"].read() == b"via a session token\n"


def test_first_failure_stops_and_done_lists_exactly_what_landed(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    items = []
    for index in range(12):
        path = tmp_path / f"f{index:02d}"
        if index != 5:
            path.write_bytes(b"%d" % index)
        items.append((path, f"p/f{index:02d}"))
    done: list[str] = []
    with pytest.raises(FileNotFoundError):
        upload_small_files(s3_storage, None, None, bucket, items, concurrency=1, done=done)
    assert done == [f"p/f{index:02d}" for index in range(5)]
    assert listed_keys(s3_client, bucket) == done


def test_stale_kept_alive_connection_is_replaced(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    target = s3_fast.fast_target(s3_storage.get_client(), s3_storage, bucket)
    assert target is not None
    wire = s3_fast._Wire(target)
    body = b"first"
    digest = hashlib.sha256(body).digest()
    assert wire.put(f"/{bucket}/s/1", body, digest, "text/plain").status == 200
    assert wire._sock is not None
    wire._sock.shutdown(socket.SHUT_WR)  # the server sees EOF and closes: the connection is now stale
    response = wire.put(f"/{bucket}/s/2", body, digest, "text/plain")
    assert response.status == 200
    assert response.headers["x-amz-checksum-sha256"] == b64sha(body)
    wire.close()
    assert listed_keys(s3_client, bucket) == ["s/1", "s/2"]


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEBYaDK+session/token=="])
def test_signature_matches_botocore(token: str | None) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b"hello\n"
    digest = hashlib.sha256(body).digest()
    path = "/bucket/pre%20fix%2B/%C3%BC%3F%23%25/a~b"
    amz_date = "20240601T120000Z"
    ours = dict(
        s3_fast._Signer(credentials, "eu-west-3").headers(path, "[::1]:9000", "text/csv", digest, amz_date)
    )
    request = AWSRequest(
        method="PUT",
        url=f"http://[::1]:9000{path}",
        data=body,
        headers={k: v for k, v in ours.items() if k not in ("authorization", "host")},
    )
    request.context["timestamp"] = amz_date
    auth = S3SigV4Auth(credentials, "s3", "eu-west-3")
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    assert ours["x-amz-content-sha256"] == digest.hex()
    assert ours["x-amz-checksum-sha256"] == b64sha(body)
    assert ours.get("x-amz-security-token") == token
    signed = auth.signed_headers(auth.headers_to_sign(request))
    assert ours["authorization"] == (
        f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240601/eu-west-3/s3/aws4_request, "
        f"SignedHeaders={signed}, Signature={signature}"
    )


def _serve_once(reply: bytes) -> tuple[socket.socket, threading.Thread]:
    """A real socket pair: the far end reads one request head and writes `reply`, then closes."""
    near, far = socket.socketpair()

    def serve() -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += far.recv(65536)
        far.sendall(reply)
        far.close()

    thread = threading.Thread(target=serve)
    thread.start()
    return near, thread


def test_response_reader_handles_1xx_chunked_and_close(s3_storage: S3Storage) -> None:
    target = s3_fast.fast_target(s3_storage.get_client(), s3_storage, "b")
    assert target is not None
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 503 Slow Down\r\nTransfer-Encoding: chunked\r\nX-Amz-Id: a\r\nx-amz-id: b\r\n\r\n"
        b"7;ext=1\r\n<Error>\r\n"
        b"20\r\n<Code>SlowDown</Code><Message>Pl\r\n"
        b"d\r\nease wait</Me\r\n0\r\nTrailer: x\r\n\r\n"
        b"HTTP/1.0 404 Not Found\r\n\r\n<Error><Code>NoSuchKey</Code></Error>"
    )
    near, thread = _serve_once(reply)
    wire = s3_fast._Wire(target)
    near.sendall(b"GET / HTTP/1.1\r\n\r\n")
    first, keep = wire._read_response(near)
    assert (first.status, keep) == (503, True)
    assert first.headers["x-amz-id"] == "a, b"
    assert first.body == b"<Error><Code>SlowDown</Code><Message>Please wait</Me"
    second, keep = wire._read_response(near)
    assert (second.status, keep, second.body) == (404, False, b"<Error><Code>NoSuchKey</Code></Error>")
    error = s3_fast._client_error(second)
    assert error.response["Error"]["Code"] == "NoSuchKey"
    assert s3_fast._client_error(first).response["Error"]["Code"] == "503"  # truncated XML: the status
    thread.join()
    near.close()
