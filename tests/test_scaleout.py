"""Scale-out: the chain and fan-out flows, unchanged, on a real dask.distributed LocalCluster (2 worker
processes) through prefect-dask's DaskTaskRunner; and the fan-out flow on Prefect's default thread runner.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prefect.blocks.core import Block
from prefect_dask import DaskTaskRunner

from prefect_bacalhau_publish import PublishedResult, S3Storage, get_result
from prefect_bacalhau_publish.specs import S3Params
from prefect_bacalhau_publish.testing import MinioServer
from tests.test_watching import task_runs

B = TypeVar("B", bound=Block)


def load(block: type[B], name: str) -> B:
    """`block.load(name)`, typed (Prefect types `load` as sync-or-async)."""
    loaded = block.load(name)
    assert isinstance(loaded, block)
    return loaded


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flows"))

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]

TOTAL = sum(range(1, 1001))


def dask_runner() -> DaskTaskRunner:
    """A LocalCluster of 2 single-threaded worker processes, everything on 127.0.0.1, no dashboard."""
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "processes": True,
            "threads_per_worker": 1,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
    )


@pytest.fixture()
def s3_block(minio: MinioServer) -> str:
    name = f"s3-scale-{uuid.uuid4().hex[:10]}"
    minio.storage().save(name)
    return name


def _check_fanout(
    state: Any, s3_block: str, tmp_path: Path, parts: int, encoding: str
) -> tuple[list[PublishedResult], set[int]]:
    """The fan-out run's results are right; returns the part results and the PIDs of the task processes."""
    assert state.is_completed(), state
    specs = state.result()
    storage = load(S3Storage, s3_block)
    source = PublishedResult.model_validate(specs["source"])
    results = [PublishedResult.model_validate(spec) for spec in specs["parts"]]
    collected = PublishedResult.model_validate(specs["collected"])
    assert len(results) == parts
    keys = {r.params.key for r in [source, *results, collected] if isinstance(r.params, S3Params)}
    assert len(keys) == parts + 2  # every job published its own result
    suffix = ".tar.gz" if encoding == "gzip" else "/"
    assert all(key.endswith(suffix) for key in keys)
    pids: set[int] = set()
    shares = []
    for part, result in enumerate(results):
        dest = get_result.fn(result, tmp_path / f"part-{part}", s3=storage)
        share = int((dest / "outputs" / "sum.txt").read_text())
        assert share == sum(n for n in range(1, 1001) if n % parts == part)
        shares.append(share)
        match = re.fullmatch(
            rf"part {part} of {parts}: {share} \(task process (\d+)\)\n", (dest / "stdout").read_text()
        )
        assert match, (dest / "stdout").read_text()
        pids.add(int(match.group(1)))
    assert sum(shares) == TOTAL
    total = get_result.fn(collected, tmp_path / "collected", s3=storage)
    assert (total / "outputs" / "total.txt").read_text() == f"{TOTAL}\n"
    assert (total / "stdout").read_text() == f"collected: {TOTAL}\n"
    runs = task_runs(state.state_details.flow_run_id)
    assert len(runs) == parts + 2 and all(run.state.is_completed() for run in runs)
    return results, pids


def test_fanout_flow_on_a_dask_cluster(s3_block: str, bucket: str, tmp_path: Path) -> None:
    from fanout import fanout

    state = fanout.with_options(task_runner=dask_runner())(
        bucket=bucket, s3_block=s3_block, parts=4, return_state=True
    )
    _, pids = _check_fanout(state, s3_block, tmp_path, parts=4, encoding="gzip")
    # the parallel jobs ran in Dask's worker processes (at most its 2), not in this test's process
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2, pids


def test_chain_flow_on_a_dask_cluster(s3_block: str, bucket: str, tmp_path: Path) -> None:
    from chain import chain

    state = chain.with_options(task_runner=dask_runner())(bucket=bucket, s3_block=s3_block, return_state=True)
    assert state.is_completed(), state
    specs = state.result()
    b = PublishedResult.model_validate(specs["b"])
    dest = get_result.fn(b, tmp_path / "b", s3=load(S3Storage, s3_block))
    assert (dest / "outputs" / "sum.txt").read_text() == f"{TOTAL}\n"
    assert (dest / "outputs" / "job-a-stdout.txt").read_text() == "job A wrote 1000 numbers\n"
    runs = task_runs(state.state_details.flow_run_id)
    assert len(runs) == 2 and all(run.state.is_completed() for run in runs)


def test_fanout_flow_on_threads_with_plain_results(s3_block: str, bucket: str, tmp_path: Path) -> None:
    from fanout import fanout

    state = fanout(bucket=bucket, s3_block=s3_block, parts=3, encoding="plain", return_state=True)
    _, pids = _check_fanout(state, s3_block, tmp_path, parts=3, encoding="plain")
    assert pids == {os.getpid()}  # Prefect's default runner: threads of this process


def test_fanout_rejects_a_bad_part_count(s3_block: str, bucket: str) -> None:
    from fanout import fanout

    state = fanout(bucket=bucket, s3_block=s3_block, parts=0, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="parts must be between 1 and 64"):
        state.result()


def test_partitioned_flow_on_a_dask_cluster(s3_block: str, bucket: str, tmp_path: Path) -> None:
    """run_partitioned submits on the flow's task runner: here Dask's worker processes."""
    from partitioned import partitioned

    state = partitioned.with_options(task_runner=dask_runner())(
        bucket=bucket, s3_block=s3_block, count=4, return_state=True
    )
    assert state.is_completed(), state
    out = state.result()
    total = get_result.fn(out["total"], tmp_path / "total", s3=load(S3Storage, s3_block))
    assert int((total / "outputs" / "total.txt").read_text()) == out["expected"]
    runs = task_runs(state.state_details.flow_run_id)
    assert len(runs) == 5 and all(run.state.is_completed() for run in runs)  # 4 partitions + the reduce
