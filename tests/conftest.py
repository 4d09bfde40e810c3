"""Shared fixtures: real MinIO and Kubo servers on 127.0.0.1, and a throwaway Prefect server.

Environment isolation happens at import time, before Prefect is imported anywhere.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PREFECT_HOME = tempfile.mkdtemp(prefix="pbp-prefect-home-")
for _name in list(os.environ):
    if _name.startswith("PREFECT_") or _name.startswith("AWS_"):
        del os.environ[_name]
os.environ.update(
    {
        "PREFECT_HOME": _PREFECT_HOME,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
        "PREFECT_TASK_DEFAULT_RETRY_DELAY_SECONDS": "0",
        "AWS_EC2_METADATA_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "PBP_JOURNAL": os.path.join(_PREFECT_HOME, "s3-pending.json"),
    }
)

import pytest  # noqa: E402

from prefect_bacalhau_publish.testing import KuboServer, MinioServer  # noqa: E402

VERSIONED_BUCKET = "pbp-versioned"
PLAIN_BUCKET = "pbp-unversioned"


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    """A real MinIO server with a versioned and an unversioned bucket."""
    server = MinioServer(tmp_path_factory.mktemp("minio") / "data").start()
    try:
        client: Any = server.client()
        client.create_bucket(Bucket=VERSIONED_BUCKET)
        client.put_bucket_versioning(Bucket=VERSIONED_BUCKET, VersioningConfiguration={"Status": "Enabled"})
        client.create_bucket(Bucket=PLAIN_BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_client(minio: MinioServer) -> Any:
    """A boto3 client on the test MinIO (root credentials)."""
    return minio.client()


@pytest.fixture()
def bucket(s3_client: Any) -> str:
    """A fresh unversioned bucket for one test."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture()
def versioned_bucket(s3_client: Any) -> str:
    """A fresh versioned bucket for one test."""
    name = f"v-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    s3_client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture()
def s3_storage(minio: MinioServer) -> Any:
    """An S3Storage block (not saved) pointing at the test MinIO through MinIOCredentials."""
    return minio.storage()


@pytest.fixture(scope="session")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboServer]:
    """A real Kubo daemon (offline, `test` profile, loopback ports)."""
    server = KuboServer(tmp_path_factory.mktemp("kubo") / "repo").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A throwaway Prefect server (SQLite in a temp folder) for tests that run flows and tasks."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
        leaks = _secrets_recorded_by_prefect()
        assert not leaks, f"credentials were recorded by Prefect: {leaks[:3]}"


def _secrets_recorded_by_prefect() -> list[str]:
    """Every log line and artifact the whole session's flows left, searched for the test credentials."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    from prefect_bacalhau_publish.testing import MINIO_PASSWORD

    secrets = (MINIO_PASSWORD, "pbp-full-token", "pbp-limited-token")
    APILogHandler().flush()  # records still queued for the API are searched too

    async def read() -> list[str]:
        found: list[str] = []
        async with get_client() as client:
            for reader in (client.read_logs, client.read_artifacts):
                offset = 0
                while True:
                    page = await reader(limit=200, offset=offset)
                    for item in page:
                        text = item.model_dump_json()
                        found += [f"{type(item).__name__}: {s}" for s in secrets if s in text]
                    if len(page) < 200:
                        break
                    offset += 200
        return found

    return asyncio.run(read())


@pytest.fixture()
def result_dir(tmp_path: Path) -> Path:
    """A small result folder laid out as Bacalhau lays out an execution's results."""
    root = tmp_path / "result"
    (root / "outputs" / "nested").mkdir(parents=True)
    (root / "stdout").write_text("hello from the job\n")
    (root / "stderr").write_text("")
    (root / "exitCode").write_text("0")
    (root / "outputs" / "data.csv").write_text("a,b\n1,2\n")
    (root / "outputs" / ".hidden").write_text("dot files are published too\n")
    (root / "outputs" / "nested" / "blob.bin").write_bytes(os.urandom(70_000))
    return root
