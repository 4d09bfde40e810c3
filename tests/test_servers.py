"""Smoke tests proving the test servers are real MinIO and Kubo."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx

from prefect_bacalhau_publish.testing import KuboServer, MinioServer


def test_minio_put_get_with_checksum_and_version(minio: MinioServer, s3_client: Any) -> None:
    body = b"the same bytes, twice\n"
    expected = base64.b64encode(hashlib.sha256(body).digest()).decode()
    put = s3_client.put_object(
        Bucket="pbp-versioned", Key="smoke/a.txt", Body=body, ChecksumAlgorithm="SHA256"
    )
    assert put["ChecksumSHA256"] == expected
    assert put["VersionId"] not in ("", "null", None)
    s3_client.put_object(Bucket="pbp-versioned", Key="smoke/a.txt", Body=b"overwritten")
    old = s3_client.get_object(Bucket="pbp-versioned", Key="smoke/a.txt", VersionId=put["VersionId"])
    assert old["Body"].read() == body
    assert minio.endpoint.startswith("http://127.0.0.1:")


def test_kubo_add_and_cat_by_cid(kubo: KuboServer) -> None:
    with httpx.Client(base_url=kubo.api_url, trust_env=False, timeout=30) as client:
        added = client.post("/api/v0/add", files={"file": ("hello", b"hello world\n")})
        assert added.status_code == 200, added.text
        cid = added.json()["Hash"]
        assert cid == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
        cat = client.post("/api/v0/cat", params={"arg": cid})
        assert cat.content == b"hello world\n"
        version = client.post("/api/v0/version").json()["Version"]
        assert version == "0.42.0"
    assert kubo.api_multiaddr.startswith("/ip4/127.0.0.1/tcp/")
