"""Awaitable twins of the tasks: `arun_job`, `apublish_result`, `afetch_inputs`, `aget_result`.

Each is a Prefect task of its own that runs the sync task's body in a worker thread (the event loop stays
free; the thread sees the task run's context, so logs and artifacts land on this run). In async code the sync
names hand over to these (see dispatch.py), so `await run_job(...)` and `await arun_job(...)` are the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task

from . import runnames, tasks
from .blocks import IPFSNode, LocalResultServer, S3Target
from .jobs import DEFAULT_RESULT_PATHS, JobCommand, JobResult
from .specs import ExecutionContext, InputSource, PublishedResult, ResultPath

__all__ = ["afetch_inputs", "aget_result", "apublish_result", "arun_job"]


@task(name="publish_result", task_run_name=runnames.publish_result_name, **tasks.TRANSFER_OPTIONS)
async def apublish_result(
    result_dir: Path | str,
    spec: tasks.PublisherArg | Sequence[tasks.PublisherArg],
    *,
    context: ExecutionContext | None = None,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
) -> PublishedResult | list[PublishedResult]:
    """Awaitable `publish_result` (one spec, or a list of them: `publishers.fanout`)."""
    return await asyncio.to_thread(
        tasks.publish_result.fn, result_dir, spec, context=context, s3=s3, ipfs=ipfs, local=local
    )


@task(name="fetch_inputs", task_run_name=runnames.fetch_inputs_name, **tasks.TRANSFER_OPTIONS)
async def afetch_inputs(
    inputs: Sequence[InputSource | Mapping[str, Any] | str],
    root: Path | str,
    *,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
    allowed_local_paths: Sequence[str] | None = None,
    partition: tuple[int, int] = (0, 1),
) -> dict[str, Path]:
    """Awaitable `fetch_inputs`."""
    return await asyncio.to_thread(
        tasks.fetch_inputs.fn,
        inputs,
        root,
        s3=s3,
        ipfs=ipfs,
        local=local,
        allowed_local_paths=allowed_local_paths,
        partition=partition,
    )


@task(name="get_result", task_run_name=runnames.get_result_name, **tasks.TRANSFER_OPTIONS)
async def aget_result(
    result: PublishedResult | Mapping[str, Any] | str | Path,
    dest: Path | str,
    *,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
    presigned: bool = False,
) -> Path:
    """Awaitable `get_result`."""
    return await asyncio.to_thread(
        tasks.get_result.fn, result, dest, s3=s3, ipfs=ipfs, local=local, presigned=presigned
    )


@task(
    name="run_job",
    task_run_name=runnames.run_job_name,
    **tasks.JOB_OPTIONS,
)
async def arun_job(
    command: JobCommand,
    *,
    publisher: tasks.PublisherArg | Sequence[tasks.PublisherArg] | None,
    inputs: Sequence[InputSource | Mapping[str, Any] | str] = (),
    result_paths: Sequence[ResultPath] = DEFAULT_RESULT_PATHS,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    job_id: str | None = None,
    node_id: str | None = None,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
    fail_on_nonzero: bool = False,
    name: str | None = None,
    log_output: bool | int = True,
    allowed_local_paths: Sequence[str] | None = None,
    partition: tuple[int, int] = (0, 1),
    reuse: bool = False,
) -> JobResult:
    """Awaitable `run_job`: the job runs in its own process (a command, or a callable), awaited off the loop."""
    return await asyncio.to_thread(
        tasks.run_job.fn,
        command,
        publisher=publisher,
        inputs=inputs,
        result_paths=result_paths,
        env=env,
        timeout=timeout,
        job_id=job_id,
        node_id=node_id,
        s3=s3,
        ipfs=ipfs,
        local=local,
        fail_on_nonzero=fail_on_nonzero,
        name=name,
        log_output=log_output,
        allowed_local_paths=allowed_local_paths,
        partition=partition,
        reuse=reuse,
    )
