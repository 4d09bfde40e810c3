"""Plain results' uploader (publishers/s3_plain.py: obstore, boto3 for keys obstore cannot carry) on MinIO."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from prefect_aws import AwsCredentials, MinIOCredentials
from pydantic import SecretStr

from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import S3PublishError
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.publishers.s3_plain import PlainFile, obstore_can_carry, upload_files
from prefect_bacalhau_publish.s3errors import explain, is_client_error
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec
from prefect_bacalhau_publish.testing import MinioServer, free_port

MiB = 1024 * 1024


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def items_under(root: Path, prefix: str) -> list[tuple[Path, str]]:
    return [(p, prefix + p.relative_to(root).as_posix()) for p in sorted(root.rglob("*")) if p.is_file()]


def listed_keys(s3_client: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


def upload(storage: S3Storage, bucket: str, items: list[tuple[Path, str]]) -> list[str]:
    done: list[str] = []
    upload_files(storage, storage.get_store(bucket), storage.get_client, bucket, planned(items), done=done)
    return done


def planned(items: list[tuple[Path, str]]) -> list[PlainFile]:
    return [PlainFile(path, key, 0o100644) for path, key in items]


def publish_message(storage: S3Storage, bucket: str, items: list[tuple[Path, str]], key: str) -> str:
    """What the uploader's failure reads as once the publisher explains it."""
    try:
        upload(storage, bucket, items)
    except Exception as exc:
        assert is_client_error(exc), exc
        return explain(exc, action="publish to", bucket=bucket, key=key, endpoint=storage.endpoint_url)
    raise AssertionError("the upload succeeded")


def boto3_message(storage: S3Storage, bucket: str, key: str) -> str:
    """What boto3 says for the same PUT, through the same `explain`."""
    try:
        storage.get_client().put_object(Bucket=bucket, Key=key, Body=b"x", ChecksumAlgorithm="SHA256")
    except (ClientError, EndpointConnectionError) as exc:
        return explain(exc, action="publish to", bucket=bucket, key=key, endpoint=storage.endpoint_url)
    raise AssertionError("the boto3 PUT succeeded")


def minio_storage(minio: MinioServer, password: str | None = None, endpoint: str | None = None) -> S3Storage:
    return S3Storage(
        credentials=MinIOCredentials(
            minio_root_user=minio.user, minio_root_password=SecretStr(password or minio.password)
        ),
        endpoint_url=endpoint or minio.endpoint,
        region_name="us-east-1",
    )


def test_uploads_land_with_bytes_type_and_checksum(
    result_dir: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    items = items_under(result_dir, "run/1/")
    done = upload(s3_storage, bucket, items)
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
    "tab\there",  # obstore refuses control characters: boto3 carries it
    "bell\x07del\x7f",
]


def test_awkward_names_round_trip_to_exact_keys(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    root = tmp_path / "r"
    (root / "dir with space" / "ü").mkdir(parents=True)
    for index, name in enumerate(NAMES):
        (root / "dir with space" / "ü" / name).write_bytes(name.encode() * (index + 1))
    items = items_under(root, "pre fix+%/")
    upload(s3_storage, bucket, items)
    assert listed_keys(s3_client, bucket) == sorted(key for _, key in items)
    assert {key.rsplit("/", 1)[1] for _, key in items} == set(NAMES)
    for path, key in items:
        assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes(), key
        head = s3_client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == b64sha(path.read_bytes()), key


@pytest.mark.parametrize(
    ("key", "carried"),
    [("a/b c%#?.txt", True), ("a/tab\tx", False), ("a//b", False), ("a/./b", False), ("a/../b", False)],
)
def test_obstore_can_carry_says_what_obstore_does(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, key: str, carried: bool
) -> None:
    import obstore

    assert obstore_can_carry(key) is carried
    if carried:
        obstore.put(s3_storage.get_store(bucket), key, b"x")
    else:
        with pytest.raises(ValueError, match="path"):
            obstore.put(s3_storage.get_store(bucket), key, b"x")


def test_empty_file(tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any) -> None:
    (tmp_path / "stderr").write_bytes(b"")
    assert upload(s3_storage, bucket, [(tmp_path / "stderr", "e/stderr")]) == ["e/stderr"]
    head = s3_client.head_object(Bucket=bucket, Key="e/stderr", ChecksumMode="ENABLED")
    assert head["ContentLength"] == 0
    assert head["ChecksumSHA256"] == b64sha(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_large_file_goes_up_in_parts_with_a_composite_checksum(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any
) -> None:
    storage = minio.storage(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    big, small = tmp_path / "big.tar", tmp_path / "small.txt"
    data = os.urandom(11 * MiB + 7)
    big.write_bytes(data)
    small.write_bytes(b"small\n")
    assert sorted(upload(storage, bucket, [(big, "m/big.tar"), (small, "m/small.txt")])) == [
        "m/big.tar",
        "m/small.txt",
    ]
    head = s3_client.head_object(Bucket=bucket, Key="m/big.tar", ChecksumMode="ENABLED")
    digests = b"".join(hashlib.sha256(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB))
    assert head["ChecksumSHA256"] == f"{b64sha(digests)}-3"
    assert head["ContentType"] == "application/x-tar"
    assert s3_client.get_object(Bucket=bucket, Key="m/big.tar")["Body"].read() == data
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_500_files_concurrently(tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any) -> None:
    root = tmp_path / "many"
    contents: dict[str, bytes] = {}
    for index in range(500):
        path = root / f"d{index % 25:02d}" / f"f{index:04d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(index * 7 % 9000)
        path.write_bytes(data)
        contents[f"many/{path.relative_to(root).as_posix()}"] = data
    done = upload(s3_storage, bucket, items_under(root, "many/"))
    assert len(done) == len(set(done)) == 500
    assert sorted(done) == sorted(contents)
    etags: dict[str, str] = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        etags.update({o["Key"]: o["ETag"].strip('"') for o in page["Contents"]})
    assert etags == {key: hashlib.md5(data).hexdigest() for key, data in contents.items()}


def test_missing_bucket_says_so_like_boto3(tmp_path: Path, s3_storage: S3Storage) -> None:
    (tmp_path / "f").write_text("x")
    message = publish_message(s3_storage, "no-such-bucket", [(tmp_path / "f", "k/f")], "k/")
    assert "bucket 'no-such-bucket' does not exist" in message
    assert message == boto3_message(s3_storage, "no-such-bucket", "k/")


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
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "k/", "Encoding": "plain"}}
    )
    with pytest.raises(S3PublishError, match="access denied") as info:
        publish_to(tmp_path, spec, ExecutionContext.new(), s3=storage)
    assert secret not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one line in a run's log
    assert str(info.value) == boto3_message(storage, bucket, "k/")
    assert listed_keys(s3_client, bucket) == []


def test_unreachable_endpoint_cannot_reach_like_boto3(tmp_path: Path, minio: MinioServer) -> None:
    storage = minio_storage(minio, endpoint=f"http://127.0.0.1:{free_port()}")
    (tmp_path / "f").write_text("x")
    message = publish_message(storage, "b", [(tmp_path / "f", "k/f")], "k/")
    assert "cannot reach the S3 endpoint at http://127.0.0.1:" in message
    assert message == boto3_message(storage, "b", "k/")


def test_no_credentials_at_all(tmp_path: Path, minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    storage = S3Storage(endpoint_url=minio.endpoint, region_name="us-east-1")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_text("x")
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": "bkt", "Key": "k/", "Encoding": "plain"}}
    )
    with pytest.raises(S3PublishError, match="no S3 credentials found"):
        publish_to(tmp_path / "out", spec, ExecutionContext.new(), s3=storage)


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
    (tmp_path / "f.txt").write_text("via a session token\n")
    assert upload(storage, bucket, [(tmp_path / "f.txt", "t/f.txt")]) == ["t/f.txt"]
    assert s3_client.get_object(Bucket=bucket, Key="t/f.txt")["Body"].read() == b"via a session token\n"


def test_first_failure_stops_and_done_lists_exactly_what_landed(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any
) -> None:
    storage = minio.storage(max_concurrency=1)
    items = []
    for index in range(12):
        path = tmp_path / f"f{index:02d}"
        if index != 5:
            path.write_bytes(b"%d" % index)
        items.append((path, f"p/f{index:02d}"))
    done: list[str] = []
    with pytest.raises(FileNotFoundError):
        upload_files(
            storage, storage.get_store(bucket), storage.get_client, bucket, planned(items), done=done
        )
    assert done == [f"p/f{index:02d}" for index in range(5)]
    assert listed_keys(s3_client, bucket) == done


CHILD = """
import sys
from concurrent.futures import ThreadPoolExecutor

import obstore
from obstore.store import S3Store

endpoint, user, password, bucket, prefix = sys.argv[1:6]
store = S3Store(
    bucket,
    config={"endpoint": endpoint, "region": "us-east-1", "checksum_algorithm": "SHA256",
            "virtual_hosted_style_request": False, "access_key_id": user, "secret_access_key": password},
    client_options={"allow_http": True},
)
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda i: obstore.put(store, f"{prefix}/{i}", b"x" * i), range(16)))
"""


def test_200_short_publishing_processes_all_exit_0(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any
) -> None:
    """obstore's Rust runtime is torn down at interpreter exit: every process that published must still
    exit 0 with nothing on stderr. The children make the same calls as `upload_files` (a store, PUTs from a
    thread pool, then a normal interpreter exit) without importing Prefect, so 200 of them fit in the suite;
    the whole CLI is checked the same way below."""
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    codes: list[tuple[int, bytes]] = []
    running: list[subprocess.Popen[bytes]] = []
    for index in range(200):
        args = [sys.executable, str(script), minio.endpoint, minio.user, minio.password, bucket, f"p{index}"]
        running.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        if len(running) == 8 or index == 199:
            for proc in running:
                _, err = proc.communicate(timeout=120)
                codes.append((proc.returncode, err))
            running = []
    assert [c for c, _ in codes] == [0] * 200, [e for c, e in codes if c][:3]
    assert all(err == b"" for _, err in codes)
    assert len(listed_keys(s3_client, bucket)) == 200 * 16


def test_cli_publish_processes_exit_0(
    tmp_path: Path, minio: MinioServer, bucket: str, result_dir: Path
) -> None:
    import subprocess
    import sys

    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": minio.user,
        "AWS_SECRET_ACCESS_KEY": minio.password,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    target = f"s3://{bucket}/cli/{{executionID}},opt=endpoint={minio.endpoint},opt=encoding=plain"
    for _ in range(5):
        done = subprocess.run(
            [sys.executable, "-m", "prefect_bacalhau_publish.cli", "publish", str(result_dir), "-p", target],
            capture_output=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        assert b"Traceback" not in done.stderr and b"panicked" not in done.stderr


@pytest.mark.parametrize("name", ["large.bin", "tab\tkey.bin"])
def test_bad_credentials_read_the_same_on_every_path(
    tmp_path: Path, minio: MinioServer, bucket: str, s3_client: Any, name: str
) -> None:
    """A large file (obstore multipart) and a key only boto3 carries (its transfer manager) fail alike."""
    secret = "not-the-password-93ab1"
    storage = minio_storage(minio, password=secret).model_copy(
        update={"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / name).write_bytes(os.urandom(6 * MiB))
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "bad/", "Encoding": "plain"}}
    )
    with pytest.raises(S3PublishError) as info:
        publish_to(tmp_path / "out", spec, ExecutionContext.new(), s3=storage)
    assert str(info.value).startswith(f"publish to s3://{bucket}/bad/ failed: access denied (")
    assert secret not in str(info.value)
    assert listed_keys(s3_client, bucket) == []
