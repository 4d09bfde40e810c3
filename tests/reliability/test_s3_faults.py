"""S3 under failure: the store killed mid-publish, down before publish; nothing visible, nothing orphaned."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish import journal
from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import S3PublishError
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec
from prefect_bacalhau_publish.testing import MinioServer

MiB = 1024 * 1024


def storage_for(server: MinioServer) -> S3Storage:
    return server.storage(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=2)


def test_minio_killed_mid_multipart_publish(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = MinioServer(tmp_path / "data").start()
    try:
        client: Any = server.client()
        client.create_bucket(Bucket="faults")
        result = tmp_path / "result"
        (result / "outputs").mkdir(parents=True)
        for index in range(8):
            (result / "outputs" / f"r{index}.bin").write_bytes(os.urandom(32 * MiB))
        spec = PublisherSpec.model_validate(
            {"Type": "s3", "Params": {"Bucket": "faults", "Key": "{executionID}"}}
        )
        first = ExecutionContext.new()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                publish_to(result, spec, first, s3=storage_for(server))
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        # Wait until the multipart upload exists on the server, then kill the server under it.
        while worker.is_alive() and not client.list_multipart_uploads(Bucket="faults").get("Uploads"):
            worker.join(timeout=0.02)
        assert worker.is_alive(), f"the publish ended before the fault could be injected: {errors}"
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        worker.join(timeout=300)
        assert not worker.is_alive(), "publish did not give up within bounded retries"
        assert len(errors) == 1 and isinstance(errors[0], S3PublishError), errors
        assert "s3://faults/" in str(errors[0])
        pending = journal.pending(server.endpoint, "faults")
        assert [key for key, _ in pending] == [f"{first.execution_id}.tar.gz"]
        assert "could not abort multipart upload " + pending[0][1] in caplog.text
        assert "the next publish to bucket 'faults'" in caplog.text

        server.start()  # same data folder, same port
        assert client.list_objects_v2(Bucket="faults").get("KeyCount", 0) == 0  # nothing visible
        rerun = publish_to(result, spec, ExecutionContext.new(), s3=storage_for(server))
        listed = [o["Key"] for o in client.list_objects_v2(Bucket="faults")["Contents"]]
        assert listed == [rerun.params.key]  # type: ignore[attr-defined]
        assert client.list_multipart_uploads(Bucket="faults").get("Uploads", []) == []  # no orphaned parts
        assert journal.pending(server.endpoint, "faults") == []
    finally:
        server.stop()


def test_minio_down_before_publish(tmp_path: Path, result_dir: Path) -> None:
    server = MinioServer(tmp_path / "data")  # never started
    spec = PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": "bkt", "Key": "k"}})
    with pytest.raises(S3PublishError, match=r"cannot reach the S3 endpoint at http://127\.0\.0\.1:\d+"):
        publish_to(result_dir, spec, ExecutionContext.new(), s3=storage_for(server))
