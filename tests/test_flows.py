"""The chain flow and the tasks end to end, under a throwaway Prefect server, on the real MinIO."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from prefect_bacalhau_publish import (
    PublishedResult,
    PublisherSpec,
    S3Storage,
    get_result,
    publish_result,
    run_job,
)
from prefect_bacalhau_publish.errors import S3PublishError
from prefect_bacalhau_publish.specs import S3Params
from prefect_bacalhau_publish.testing import MinioServer
from tests.prefectkit import artifacts_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flows"))

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture()
def saved_s3_block(minio: MinioServer) -> str:
    name = f"s3-{uuid.uuid4().hex[:10]}"
    minio.storage().save(name)
    return name


@pytest.mark.parametrize("encoding", ["gzip", "plain"])
def test_chain_flow_end_to_end(
    saved_s3_block: str, bucket: str, s3_client: Any, tmp_path: Path, encoding: str
) -> None:
    from chain import chain

    state = chain(bucket=bucket, s3_block=saved_s3_block, encoding=encoding, return_state=True)
    assert state.is_completed(), state
    specs = state.result()
    a, b = PublishedResult.model_validate(specs["a"]), PublishedResult.model_validate(specs["b"])
    assert isinstance(a.params, S3Params) and isinstance(b.params, S3Params)
    assert a.params.key != b.params.key
    assert a.params.key.endswith(".tar.gz" if encoding == "gzip" else "/")
    # job B really read job A's published output through its S3 input source
    storage = S3Storage.load(saved_s3_block)
    dest = get_result.fn(b, tmp_path / "b", s3=storage)
    assert (dest / "outputs" / "sum.txt").read_text() == f"{sum(range(1, 1001))}\n"
    assert (dest / "outputs" / "job-a-stdout.txt").read_text() == "job A wrote 1000 numbers\n"
    assert (dest / "exitCode").read_text() == "0"
    assert (dest / "stdout").read_text() == f"job B summed: {sum(range(1, 1001))}\n"
    # every publish left a table artifact and a link artifact holding the spec
    artifacts = artifacts_of(state.state_details.flow_run_id)
    tables = [x for x in artifacts if x.type == "table"]
    links = [x for x in artifacts if x.type == "markdown" or x.type == "link"]
    assert len(tables) == 2 and len(links) == 2
    recorded = sorted(json.dumps(get_spec(x.description), sort_keys=True) for x in tables)
    assert recorded == sorted(json.dumps(s, sort_keys=True) for s in (specs["a"], specs["b"]))
    # and get_result finds a result again from its artifact key alone
    again = get_result.fn(tables[0].key, tmp_path / "by-key", s3=storage)
    assert (again / "exitCode").read_text() == "0"


def get_spec(description: str) -> dict[str, Any]:
    from prefect_bacalhau_publish.artifacts import spec_from_description

    return spec_from_description(description).to_bacalhau()


def test_publish_result_task_in_a_flow(result_dir: Path, s3_storage: S3Storage, bucket: str) -> None:
    @flow
    def publish_flow() -> PublishedResult:
        return publish_result(result_dir, f"s3://{bucket}/t/{{jobID}}", s3=s3_storage)

    result = publish_flow()
    assert isinstance(result.params, S3Params)
    assert result.params.key.startswith("t/j-") and result.params.key.endswith(".tar.gz")


def test_async_flow_can_submit_tasks(result_dir: Path, s3_storage: S3Storage, bucket: str) -> None:
    @flow
    async def async_flow() -> PublishedResult:
        future = publish_result.submit(
            result_dir, {"Type": "s3", "Params": {"Bucket": bucket, "Key": "async"}}, s3=s3_storage
        )
        return future.result()

    result = asyncio.run(async_flow())
    assert result.params.key == "async.tar.gz"  # type: ignore[attr-defined]


def test_no_retry_on_missing_bucket(result_dir: Path, s3_storage: S3Storage) -> None:
    calls: list[int] = []

    @flow
    def failing() -> None:
        calls.append(1)
        publish_result(
            result_dir,
            PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": "missing-bkt", "Key": "k"}}),
            s3=s3_storage,
        )

    state = failing(return_state=True)
    assert state.is_failed()
    with pytest.raises(S3PublishError, match="does not exist"):
        state.result()

    # a 404 is not transient: the task failed once, without retries
    async def task_runs() -> list[Any]:
        async with get_client() as client:
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )

    runs = asyncio.run(task_runs())
    assert len(runs) == 1 and runs[0].run_count == 1


def test_run_job_non_zero_exit_still_publishes(s3_storage: S3Storage, bucket: str, tmp_path: Path) -> None:
    @flow
    def job_flow() -> Any:
        return run_job(
            "echo partial > outputs/p.txt; echo oops >&2; exit 3",
            publisher={"Type": "s3", "Params": {"Bucket": bucket, "Key": "fail/{jobID}"}},
            s3=s3_storage,
        )

    job = job_flow()
    assert job.exit_code == 3 and job.published is not None
    dest = get_result.fn(job.published, tmp_path / "r", s3=s3_storage)
    assert (dest / "exitCode").read_text() == "3"
    assert (dest / "stderr").read_text() == "oops\n"
    assert (dest / "outputs" / "p.txt").read_text() == "partial\n"


def test_run_job_python_callable(s3_storage: S3Storage, bucket: str, tmp_path: Path) -> None:
    def work(folder: Path) -> None:
        (folder / "outputs" / "hello.txt").write_text("from python\n")
        print("printed")

    @flow
    def job_flow() -> Any:
        return run_job(work, publisher=f"s3://{bucket}/py/{{executionID}},opt=encoding=plain", s3=s3_storage)

    job = job_flow()
    assert job.exit_code == 0 and job.published is not None
    assert job.published.params.key == f"py/{job.context.execution_id}/"  # type: ignore[attr-defined]
    dest = get_result.fn(job.published, tmp_path / "r", s3=s3_storage)
    assert (dest / "outputs" / "hello.txt").read_text() == "from python\n"
    assert (dest / "stdout").read_text() == "printed\n"


def test_ipfs_chain_and_cli_get(kubo: Any, tmp_path: Path) -> None:
    from prefect_bacalhau_publish import IPFSNode
    from prefect_bacalhau_publish.cli import app
    from prefect_bacalhau_publish.specs import IPFSParams

    node = IPFSNode(api_address=kubo.api_multiaddr, gateway_url=kubo.gateway_url)

    @flow
    def ipfs_chain() -> tuple[Any, Any]:
        a = run_job(
            "printf 'a\\nb\\n' > outputs/lines.txt; touch outputs/.hidden", publisher="ipfs", ipfs=node
        )
        assert a.published is not None
        b = run_job(
            "wc -l < inputs/a/outputs/lines.txt > outputs/count.txt",
            publisher="ipfs",
            inputs=[a.published.to_input_source("/inputs/a")],
            ipfs=node,
        )
        return a, b

    state = ipfs_chain(return_state=True)
    assert state.is_completed()
    a, b = state.result()
    assert isinstance(a.published.params, IPFSParams) and a.published.params.cid != b.published.params.cid
    assert isinstance(b.published.params, IPFSParams)
    links = [x for x in artifacts_of(state.state_details.flow_run_id) if x.type != "table"]
    assert any(f"{kubo.gateway_url}/ipfs/{b.published.params.cid}" in (x.data or "") for x in links)
    node.save("cli-ipfs", overwrite=True)
    spec_file = tmp_path / "b.json"
    spec_file.write_text(json.dumps(b.published.to_bacalhau()))
    with pytest.raises(SystemExit) as ended:
        app(["get", str(spec_file), "-o", str(tmp_path / "got"), "--ipfs-block", "cli-ipfs"])
    assert ended.value.code in (0, None)
    assert (tmp_path / "got" / "outputs" / "count.txt").read_text().strip() == "2"
    assert (tmp_path / "got" / "exitCode").read_text() == "0"


def test_local_chain_through_the_result_server(tmp_path: Path) -> None:
    from prefect_bacalhau_publish import LocalResultServer
    from prefect_bacalhau_publish.server import running_server
    from prefect_bacalhau_publish.specs import URLParams
    from prefect_bacalhau_publish.testing import free_port

    port = free_port()
    config = LocalResultServer(storage_dir=tmp_path / "store", port=port, public_address="127.0.0.1")
    with running_server(config, port=port):

        @flow
        def local_chain() -> tuple[Any, Any]:
            a = run_job("echo from-a > outputs/a.txt", publisher="local", local=config)
            assert a.published is not None
            b = run_job(
                "tr a-z A-Z < inputs/a/outputs/a.txt > outputs/b.txt",
                publisher="local",
                inputs=[a.published.to_input_source("/inputs/a")],
                local=config,
            )
            return a, b

        state = local_chain(return_state=True)
        assert state.is_completed()
        a, b = state.result()
        assert isinstance(b.published.params, URLParams)
        assert b.published.params.url == f"http://127.0.0.1:{port}/{b.context.execution_id}.tar.gz"
        dest = get_result.fn(b.published, tmp_path / "got")
        assert (dest / "outputs" / "b.txt").read_text() == "FROM-A\n"
        links = [x for x in artifacts_of(state.state_details.flow_run_id) if x.type != "table"]
        assert any(a.published.params.url in (x.data or "") for x in links)
