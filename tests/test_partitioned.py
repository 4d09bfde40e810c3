"""Partitioned jobs (issue 21): each execution fetches its share of an S3 prefix, as Bacalhau assigns it, and
the N executions run as a Prefect map into one reduce job; real MinIO and a throwaway Prefect server."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from prefect_bacalhau_publish import (
    PublishedResult,
    SpecError,
    arun_partitioned,
    fetch_inputs,
    get_result,
    partition_objects,
    run_job,
    run_partitioned,
)
from prefect_bacalhau_publish.specs import InputSource, S3Params
from prefect_bacalhau_publish.testing import MinioServer
from tests.prefectkit import artifacts_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flows"))

pytestmark = pytest.mark.usefixtures("prefect_server")

PATTERN = r"(\d{4}-\d{2}-\d{2})"


def sales_input(bucket: str, kind: str = "regex") -> InputSource:
    partition: dict[str, Any] = {"Type": kind}
    if kind == "regex":
        partition["Pattern"] = PATTERN
    return InputSource.model_validate(
        {
            "Source": {"Type": "s3", "Params": {"Bucket": bucket, "Key": "sales/", "Partition": partition}},
            "Target": "/inputs/sales",
        }
    )


def put_days(s3_client: Any, bucket: str, days: int = 9) -> list[str]:
    keys = []
    for day in range(1, days + 1):
        for store in "ab":
            key = f"sales/2026-11-{day:02d}/{store}.csv"
            s3_client.put_object(Bucket=bucket, Key=key, Body=f"{day},{store}\n".encode())
            keys.append(key)
    s3_client.put_object(Bucket=bucket, Key="sales/README", Body=b"no date here")  # unmatched: partition 0
    s3_client.put_object(Bucket=bucket, Key="sales/empty/", Body=b"")  # a folder marker: never fetched
    return [*keys, "sales/README"]


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_each_execution_fetches_exactly_its_share(
    minio: MinioServer, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    keys = put_days(s3_client, bucket)
    source = sales_input(bucket)
    params = source.source.params
    assert isinstance(params, S3Params)
    storage = minio.storage()
    shares = []
    for index in range(4):
        got = fetch_inputs.fn([source], tmp_path / f"p{index}", s3=storage, partition=(index, 4))
        fetched = {f"sales/{name}" for name in files_under(got["/inputs/sales"])}
        assert fetched == set(partition_objects(keys, params, 4, index))  # Bacalhau's assignment
        shares.append(fetched)
    assert set().union(*shares) == set(keys)  # nothing lost, the marker never fetched
    assert sum(len(share) for share in shares) == len(keys)  # nothing twice
    assert "sales/README" in shares[0]
    # a day's two files always land together: the partition key is the date
    for share in shares:
        days = {key.split("/")[1] for key in share if key != "sales/README"}
        assert {f"sales/{day}/{store}.csv" for day in days for store in "ab"} <= share
    whole = fetch_inputs.fn([source], tmp_path / "all", s3=storage)
    assert {f"sales/{n}" for n in files_under(whole["/inputs/sales"])} == set(keys)
    assert (whole["/inputs/sales"] / "empty").is_dir()  # one execution: the marker is an empty folder


def test_partition_bounds_are_checked_before_anything_runs(minio: MinioServer, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="partition index must be between 0 and 3"):
        fetch_inputs.fn([], tmp_path / "x", partition=(4, 4))
    with pytest.raises(SpecError, match="count must be greater than 0"):
        run_job.fn("true", publisher=None, partition=(0, 0))
    with pytest.raises(SpecError, match="count must be greater than 0"):
        run_partitioned("true", 0, publisher=None)


def test_a_job_sees_bacalhaus_partition_variables(tmp_path: Path) -> None:
    job = run_job.fn(
        'echo "$BACALHAU_PARTITION_INDEX/$BACALHAU_PARTITION_COUNT $BACALHAU_JOB_TYPE"',
        publisher=None,
        partition=(2, 5),
    )
    assert job.stdout_tail == "2/5 batch\n"
    plain = run_job.fn('echo "$BACALHAU_PARTITION_INDEX/$BACALHAU_PARTITION_COUNT"', publisher=None)
    assert plain.stdout_tail == "0/1\n"  # as Bacalhau: every execution sees them


def test_partitioned_flow_maps_then_reduces(
    minio: MinioServer, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    from partitioned import partitioned

    block = f"s3-{uuid.uuid4().hex[:10]}"
    minio.storage().save(block)
    state = partitioned(bucket=bucket, s3_block=block, count=4, return_state=True)
    assert state.is_completed(), state
    out = state.result()
    parts = [PublishedResult.model_validate(spec) for spec in out["partitions"]]
    assert len(parts) == 4
    keys = [p.params.key for p in parts]  # type: ignore[union-attr]
    assert len(set(keys)) == 4  # {executionID} differs per partition
    assert len({key.split("/")[1] for key in keys}) == 1  # one job ID
    storage = minio.storage()
    seen: list[str] = []
    sums = 0
    for index, part in enumerate(parts):
        got = get_result.fn(part, tmp_path / f"part-{index}", s3=storage)
        assert (got / "stdout").read_text().startswith(f"partition {index} of 4:")
        seen += (got / "outputs" / "files.txt").read_text().split()
        sums += int((got / "outputs" / "sum.txt").read_text())
    assert len(seen) == len(set(seen)) == 28  # 14 days × 2 stores, each file in one partition only
    assert sums == out["expected"]
    total = get_result.fn(PublishedResult.model_validate(out["total"]), tmp_path / "total", s3=storage)
    assert int((total / "outputs" / "total.txt").read_text()) == out["expected"]
    tables = [
        a for a in artifacts_of(state.state_details.flow_run_id) if (a.key or "").endswith("-partitions")
    ]
    assert len(tables) == 1
    rows = json.loads(tables[0].data)
    assert [row["partition"] for row in rows] == [0, 1, 2, 3]
    assert [row["published"] for row in rows] == [f"s3://{bucket}/{key}" for key in keys]


def test_async_partitions_overlap(minio: MinioServer, bucket: str, s3_client: Any) -> None:
    put_days(s3_client, bucket, days=4)

    @flow
    async def run() -> list[Any]:
        return await arun_partitioned(
            's=$(date +%s.%N); sleep 1; echo "$s $(date +%s.%N) $(find inputs -type f | wc -l)"',
            3,
            publisher=None,
            inputs=[sales_input(bucket, "object")],
            s3=minio.storage(),
        )

    results = asyncio.run(run())
    assert [r.exit_code for r in results] == [0, 0, 0]
    spans = [tuple(float(x) for x in r.stdout_tail.split()[:2]) for r in results]
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # all three ran at once
    assert sum(int(r.stdout_tail.split()[2]) for r in results) == 9  # 8 day files + README, each once
    assert len({r.context.execution_id for r in results}) == 3
    assert len({r.context.job_id for r in results}) == 1


JOB_SPEC = """
Name: daily
Type: batch
Count: 4
Tasks:
  - Name: main
    Engine: {Type: docker, Params: {Image: ubuntu}}
    Publisher: {Type: s3, Params: {Bucket: BUCKET, Key: "spec/{jobID}/{executionID}"}}
    InputSources:
      - Target: /inputs/sales
        Source:
          Type: s3
          Params:
            Bucket: BUCKET
            Key: sales/
            Partition: {Type: regex, Pattern: '(\\d{4}-\\d{2}-\\d{2})'}
"""


def test_a_bacalhau_job_spec_with_count_runs_as_that_many_partitions(
    minio: MinioServer, bucket: str, s3_client: Any
) -> None:
    from prefect_bacalhau_publish import SpecError as PackageSpecError
    from prefect_bacalhau_publish.parse import parse_job_spec

    keys = put_days(s3_client, bucket, days=6)
    io = parse_job_spec(JOB_SPEC.replace("BUCKET", bucket))["main"]
    assert io.count == 4
    assert io.inputs[0].to_bacalhau()["Source"]["Params"]["Partition"]["Type"] == "regex"

    @flow
    def run() -> list[Any]:
        return run_partitioned(
            "find inputs -type f | sort",
            io.count,
            publisher=io.publisher,
            inputs=io.inputs,
            s3=minio.storage(),
        )

    results = run()
    assert len(results) == 4
    fetched = [line for r in results for line in r.stdout_tail.split()]
    assert sorted(f"sales/{p.removeprefix('inputs/sales/')}" for p in fetched) == sorted(keys)
    assert parse_job_spec("Tasks: [{Name: t}]")["t"].count == 1  # no Count: once, as Bacalhau
    with pytest.raises(PackageSpecError, match="job count must be >= 0"):
        parse_job_spec("Count: -1\nTasks: [{Name: t}]")
