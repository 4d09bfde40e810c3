"""A partitioned job: one command run as `count` executions of one job, each on its share of the S3 inputs.

This is Bacalhau's `Count: N` with a partitioned S3 input source, as a Prefect map: the executions are
submitted on the flow's task runner (threads by default, Dask with prefect-dask), share one job ID, get
their own execution IDs (so `{executionID}` keys never collide) and `BACALHAU_PARTITION_INDEX`/`_COUNT`,
and come back in index order, ready to be a reduce job's inputs. One table artifact lists them all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import SpecError
from .jobs import JobCommand, JobResult, job_name

__all__ = ["arun_partitioned", "run_partitioned"]


def _executions(
    command: JobCommand, count: int, job_id: str | None, name: str | None, **options: Any
) -> tuple[str, str, list[dict[str, Any]]]:
    """The job's name and ID, and the keyword arguments of each of its `count` `run_job` calls."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SpecError(f"job partitions/count must be greater than 0, got {count!r}")
    job_id = job_id or f"j-{uuid.uuid4()}"
    name = job_name(command, name)
    calls = [
        dict(
            job_id=job_id, name=f"{name}-{index}", partition=(index, count), **options
        )  # a repeat: TypeError
        for index in range(count)
    ]
    return name, job_id, calls


def run_partitioned(
    command: JobCommand,
    count: int,
    *,
    publisher: Any,
    inputs: Sequence[Any] = (),
    job_id: str | None = None,
    name: str | None = None,
    **options: Any,
) -> list[JobResult]:
    """Run `command` as `count` executions (`run_job` with `partition=(i, count)`) submitted at once on the
    flow's task runner; returns their `JobResult`s in index order. `options` are `run_job`'s."""
    from .tasks import run_job

    name, job_id, calls = _executions(
        command, count, job_id, name, publisher=publisher, inputs=inputs, **options
    )
    futures = [run_job.submit(command, **call) for call in calls]
    results = [future.result() for future in futures]
    _record(name, job_id, results)
    return results


async def arun_partitioned(
    command: JobCommand,
    count: int,
    *,
    publisher: Any,
    inputs: Sequence[Any] = (),
    job_id: str | None = None,
    name: str | None = None,
    **options: Any,
) -> list[JobResult]:
    """Awaitable `run_partitioned`: the `count` `arun_job` calls are gathered, so they overlap."""
    from .tasks_async import arun_job

    name, job_id, calls = _executions(
        command, count, job_id, name, publisher=publisher, inputs=inputs, **options
    )
    results = await asyncio.gather(*(arun_job(command, **call) for call in calls))
    await asyncio.to_thread(_record, name, job_id, list(results))
    return list(results)


def _row(index: int, result: JobResult) -> Mapping[str, Any]:
    from .transfer import location

    published = result.published
    return {
        "partition": index,
        "execution": result.context.execution_id,
        "exit code": result.exit_code,
        "published": location(published.params) if published else "",
        "artifact": result.artifact_key or "",
    }


def _record(name: str, job_id: str, results: list[JobResult]) -> None:
    """One table artifact listing every partition's result (only inside a Prefect run)."""
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    from .artifacts import artifact_key

    create_table_artifact(
        [dict(_row(index, result)) for index, result in enumerate(results)],
        key=f"{artifact_key(job_id)}-partitions"[:255],
        description=f"{name}: {len(results)} partitions of job {job_id}",
        _sync=True,  # type: ignore[call-arg]
    )
