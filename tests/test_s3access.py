"""Stores built without boto3 when the keys are in the environment, and through boto3's chain otherwise.

`environment_keys` must read exactly what botocore's `EnvProvider` (the first link of boto3's default chain)
reads, so it is compared with botocore itself; both ways of building a store then talk to the real MinIO.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import obstore
import pytest
from botocore.credentials import EnvProvider
from botocore.exceptions import NoCredentialsError

from prefect_bacalhau_publish.s3access import DefaultS3, environment_keys
from prefect_bacalhau_publish.testing import MinioServer

ENVIRONMENTS: list[dict[str, str]] = [
    {"AWS_ACCESS_KEY_ID": "AKIAONE", "AWS_SECRET_ACCESS_KEY": "secret-one"},
    {"AWS_ACCESS_KEY_ID": "AKIATWO", "AWS_SECRET_ACCESS_KEY": "secret-two", "AWS_SESSION_TOKEN": "session"},
    {
        "AWS_ACCESS_KEY_ID": "AKIATHREE",
        "AWS_SECRET_ACCESS_KEY": "secret-three",
        "AWS_SECURITY_TOKEN": "security",
        "AWS_SESSION_TOKEN": "session",
    },
    {"AWS_ACCESS_KEY_ID": "AKIAFOUR", "AWS_SECRET_ACCESS_KEY": "s", "AWS_PROFILE": "someone-else"},
]


@pytest.mark.parametrize("environ", ENVIRONMENTS)
def test_environment_keys_are_what_botocore_reads_first(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    credentials = EnvProvider(environ=environ).load()
    assert credentials is not None
    expected = {"access_key_id": credentials.access_key, "secret_access_key": credentials.secret_key}
    if credentials.token is not None:
        expected["session_token"] = credentials.token
    assert environment_keys() == expected


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"AWS_ACCESS_KEY_ID": "AKIA"},  # botocore raises PartialCredentialsError: left to it
        {"AWS_SECRET_ACCESS_KEY": "secret"},
        {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "secret"},
        # keys that expire are refreshed by boto3's provider, so they go through it
        {
            "AWS_ACCESS_KEY_ID": "A",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_CREDENTIAL_EXPIRATION": "2030-01-01T00:00:00Z",
        },
    ],
)
def test_environment_keys_leave_everything_else_to_boto3(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert environment_keys() is None


def _round_trip(store: Any) -> bytes:
    obstore.put(store, "access/probe", b"probe")
    return bytes(obstore.get(store, "access/probe").bytes())


def test_a_store_from_environment_keys_reaches_minio(
    minio: MinioServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.user)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.password)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage = DefaultS3(endpoint_url=minio.endpoint)
    assert storage.resolve() == (minio.endpoint, "us-east-1")
    assert _round_trip(storage.get_store(bucket)) == b"probe"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|InvalidAccessKeyId|403") as refused:
        _round_trip(DefaultS3(endpoint_url=minio.endpoint).get_store(bucket))
    assert "not-the-secret" not in str(refused.value)


def test_a_store_from_boto3s_chain_reaches_minio(
    minio: MinioServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No keys in the environment: a shared credentials file, which only boto3's chain reads."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    shared = tmp_path / "credentials"
    shared.write_text(
        f"[default]\naws_access_key_id = {minio.user}\naws_secret_access_key = {minio.password}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    assert environment_keys() is None
    storage = DefaultS3(endpoint_url=minio.endpoint, region_name="us-east-1")
    assert _round_trip(storage.get_store(bucket)) == b"probe"
    shared.unlink()
    with pytest.raises(NoCredentialsError):
        DefaultS3(endpoint_url=minio.endpoint, region_name="us-east-1").get_store(bucket)
