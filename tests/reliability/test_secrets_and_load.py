"""Secrets never leak; 50 concurrent publishes from one flow all land, distinct and correct."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, unmapped
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_aws import MinIOCredentials

from prefect_bacalhau_publish import PublishedResult, S3Storage, publish_result, run_job
from prefect_bacalhau_publish.errors import S3PublishError
from prefect_bacalhau_publish.testing import MinioServer

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_records(flow_run_id: Any) -> tuple[list[str], list[str]]:
    async def read() -> tuple[list[str], list[str]]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
            return [log.message for log in logs], [json.dumps(a.data) + (a.description or "") for a in arts]

    return asyncio.run(read())


def test_credentials_appear_nowhere(
    minio: MinioServer, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = minio.password
    storage = S3Storage(
        credentials=MinIOCredentials(minio_root_user=minio.user, minio_root_password=password),
        endpoint_url=minio.endpoint,
    )
    wrong = S3Storage(
        credentials=MinIOCredentials(minio_root_user=minio.user, minio_root_password="wrong-" + password),
        endpoint_url=minio.endpoint,
    )
    caplog.set_level(logging.DEBUG, logger="prefect_bacalhau_publish")

    @flow
    def jobs() -> list[dict[str, Any]]:
        specs = []
        for encoding in ("gzip", "plain"):
            job = run_job(
                "echo secret-free > outputs/x.txt",
                publisher={
                    "Type": "s3",
                    "Params": {"Bucket": bucket, "Key": "sec/{jobID}", "Encoding": encoding},
                },
                s3=storage,
            )
            assert job.published is not None
            specs.append(job.published.to_bacalhau())
        return specs

    state = jobs(return_state=True)
    assert state.is_completed()
    specs = state.result()
    logs, artifacts = run_records(state.state_details.flow_run_id)
    assert len(artifacts) == 4 and logs
    with pytest.raises(S3PublishError) as failure:
        publish_result.fn(Path(__file__).parent, f"s3://{bucket}/denied", s3=wrong)
    haystacks = [
        *logs,
        *artifacts,
        json.dumps(specs),
        caplog.text,
        str(failure.value),
        repr(storage),
        str(storage),
    ]
    for secret in (password, "wrong-" + password):
        assert not [h for h in haystacks if secret in h]


def test_fifty_concurrent_publishes(
    minio: MinioServer, s3_storage: S3Storage, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    folders = []
    for index in range(50):
        folder = tmp_path / f"r{index}"
        (folder / "outputs").mkdir(parents=True)
        (folder / "outputs" / "n.txt").write_text(f"result {index}\n" * (index + 1))
        folders.append(folder)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=16))
    def fan_out() -> list[PublishedResult]:
        futures = publish_result.map(
            folders, spec=f"s3://{bucket}/load/{{executionID}}", s3=unmapped(s3_storage)
        )
        return [f.result() for f in futures]

    results = fan_out()
    keys = [r.params.key for r in results]  # type: ignore[attr-defined]
    assert len(set(keys)) == 50
    listed = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == set(keys)
    for result in results:
        body = s3_client.get_object(Bucket=bucket, Key=result.params.key)["Body"].read()  # type: ignore[attr-defined]
        assert base64.b64encode(hashlib.sha256(body).digest()).decode() == result.params.checksum_sha256  # type: ignore[attr-defined]
