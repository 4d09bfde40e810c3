"""Prefect tasks over the publishers and sources: retries on transient failures only, run logging, artifacts."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

from .artifacts import artifact_key, job_artifact_key, record_result
from .blocks import IPFSNode, LocalResultServer, S3Storage, S3Target
from .dispatch import dispatching
from .errors import PublishError, SpecError
from .jobs import DEFAULT_RESULT_PATHS, JobCommand, JobResult, execute_job, fetch_all, job_name
from .parse import validate_spec
from .presign import presign
from .process import OutputLog
from .publishers import publish_to
from .publishers.fanout import FanOutError, publish_many
from .resolve import fetch_result, resolve_result
from .reuse import REUSE_WHEN_ASKED
from .runnames import fetch_inputs_name, get_result_name, publish_result_name, run_job_name
from .s3errors import is_transient
from .specs import (
    ExecutionContext,
    InputSource,
    PublishedResult,
    PublisherSpec,
    ResultPath,
    S3Params,
    parse_publisher_string,
)

__all__ = ["fetch_inputs", "get_result", "publish_result", "record_published", "run_job"]

_fallback_logger = logging.getLogger("prefect_bacalhau_publish")
_job_output = logging.getLogger("prefect_bacalhau_publish.job_output")
_job_output.addHandler(APILogHandler())
_job_output.setLevel(logging.INFO)
_job_output.propagate = False


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        return _fallback_logger


def _output_logger(run_logger: Any) -> Any:
    """The run's logger, but sending to the Prefect API only: Prefect's console handler (Rich, highlighting
    every record) costs about 50x the job itself on long output (bench_logs.py); the UI shows every line."""
    extra = getattr(run_logger, "extra", None)
    return run_logger if extra is None else type(run_logger)(_job_output, extra)


def _line_limit(log_output: bool | int) -> int:
    if isinstance(log_output, bool):
        return 10_000 if log_output else 0
    if log_output < 0:
        raise ValueError("log_output must be True, False or a number of lines >= 0")
    return log_output


def retry_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry only failures worth retrying (S3 throttling/5xx/dropped connections), never 403/404/bad specs."""
    try:
        state.result()
    except BaseException as exc:
        return is_transient(exc)
    return False


TRANSFER_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_transient,
}
"""Task options of publish/fetch/get and their async twins: no cache, retries on transient failures only."""
JOB_OPTIONS: dict[str, Any] = {
    **TRANSFER_OPTIONS,
    "retries": 1,
    "retry_delay_seconds": [2],
    "cache_policy": REUSE_WHEN_ASKED,
}
"""Task options of `run_job` and `arun_job`: one retry (a job may be costly to run again); cached only when
a call says `reuse=True` (reuse.py; the policy makes Prefect persist results, as caching needs)."""


def as_publisher(spec: PublisherSpec | Mapping[str, Any] | str) -> PublisherSpec:
    """A PublisherSpec from itself, its Bacalhau JSON object, or Bacalhau's CLI syntax; SpecError if malformed."""
    if isinstance(spec, PublisherSpec):
        return spec
    if isinstance(spec, str):
        return parse_publisher_string(spec)
    return validate_spec(PublisherSpec, spec, "invalid publisher")


PublisherArg = PublisherSpec | Mapping[str, Any] | str


def as_publishers(spec: PublisherArg | Sequence[PublisherArg]) -> PublisherSpec | list[PublisherSpec]:
    """`as_publisher` of one spec; of a list (or tuple) of specs, the list of them (SpecError when empty)."""
    if isinstance(spec, PublisherSpec | Mapping | str):
        return as_publisher(spec)
    specs = [as_publisher(one) for one in spec]
    if not specs:
        raise SpecError("the list of publishers is empty: give at least one (or None: no publish)")
    return specs


def _record_each(
    results: Sequence[PublishedResult | None],
    context: ExecutionContext,
    *,
    s3: S3Target | None,
    ipfs: IPFSNode | None,
    name: str | None = None,
) -> str | None:
    """`record_published` for each result of several publishers (None: that one failed), so each gets its
    artifacts and event: the first target's under the usual key (returned), the n-th's under `KEY-n-type`."""
    first = None
    for position, result in enumerate(results):
        if result is None:
            continue
        _logger().info("published: %s", result.model_dump_json(by_alias=True, exclude_none=True))
        suffix = f"{position + 1}-{result.type.lower()}" if position else None
        key = record_published(result, context, s3=s3, ipfs=ipfs, name=name, key_suffix=suffix)
        first = key if position == 0 else first
    return first


def _presign(result: PublishedResult, s3: S3Target | None) -> str | None:
    params = result.params
    if not isinstance(params, S3Params) or params.is_prefix:
        return None
    return presign(params, S3Storage.coerce(s3)).pre_signed_url


def _flow_name() -> str | None:
    from prefect.runtime import flow_run

    try:
        return str(flow_run.flow_name) or None
    except Exception:  # no flow run, or the API cannot say: fall back to the job-ID key
        return None


def _ids() -> dict[str, str | None]:
    run = TaskRunContext.get()
    if run is None:
        return {"flow_run_id": None, "task_run_id": None}
    flow_run_id = run.task_run.flow_run_id
    return {"flow_run_id": str(flow_run_id) if flow_run_id else None, "task_run_id": str(run.task_run.id)}


def record_published(
    result: PublishedResult,
    context: ExecutionContext,
    *,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    title: str | None = None,
    name: str | None = None,
    key_suffix: str | None = None,
) -> str | None:
    """Record the result as table + link artifacts when running inside Prefect; returns the artifact key.

    With a job `name`, the key is the flow's and the job's (`bacalhau-FLOW-JOB`), so every run of the flow adds
    a version to the same artifact; without one, the key is the job ID's (`bacalhau-j-…`). Emits the
    `bacalhau.result.published` event first (events.py: inside a run, or outside one with an API configured).
    """
    from .events import emit_published

    emit_published(result, context, job_name=name)
    if TaskRunContext.get() is None:
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return None
    flow_name = _flow_name() if name else None
    key = job_artifact_key(flow_name, name) if flow_name and name else artifact_key(context.job_id)
    if key_suffix:  # one of several publishers' results (lower-case letters, digits, dashes)
        key = f"{key[: 199 - len(key_suffix)]}-{key_suffix}"
    gateway = ipfs.gateway_url if ipfs is not None else None
    record_result(
        result,
        key=key,
        title=title or f"Result of job {context.job_id} (execution {context.execution_id})",
        presigned_url=_presign(result, s3),
        gateway_url=gateway,
    )
    return key


@dispatching(
    "prefect_bacalhau_publish.tasks_async:apublish_result",
    name="publish_result",
    task_run_name=publish_result_name,
    **TRANSFER_OPTIONS,
)
def publish_result(
    result_dir: Path | str,
    spec: PublisherArg | Sequence[PublisherArg],
    *,
    context: ExecutionContext | None = None,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
) -> PublishedResult | list[PublishedResult]:
    """Publish a result folder with the publisher `spec` names; records the artifacts; returns the result spec.

    `spec` is a PublisherSpec, its JSON object, or Bacalhau's CLI syntax (`s3://bucket/key,opt=...`). A list
    of them publishes to every one in one pass and returns the list of results in the same order
    (`publishers.fanout`); when any target fails, the others' results are kept, recorded, and carried by the
    `FanOutError` raised.
    """
    spec = as_publishers(spec)
    context = context or ExecutionContext.current()
    log = _logger()
    log.info(
        "publishing %s to %s (job %s, execution %s)",
        result_dir,
        ", ".join(s.type for s in spec) if isinstance(spec, list) else spec.type,
        context.job_id,
        context.execution_id,
    )
    if isinstance(spec, list):
        try:
            results = publish_many(Path(result_dir), spec, context, s3=s3, ipfs=ipfs, local=local)
        except FanOutError as exc:
            _record_each(exc.results, context, s3=s3, ipfs=ipfs)
            raise
        _record_each(results, context, s3=s3, ipfs=ipfs)
        return results
    result = publish_to(Path(result_dir), spec, context, s3=s3, ipfs=ipfs, local=local)
    log.info("published: %s", result.model_dump_json(by_alias=True, exclude_none=True))
    record_published(result, context, s3=s3, ipfs=ipfs)
    return result


@dispatching(
    "prefect_bacalhau_publish.tasks_async:afetch_inputs",
    name="fetch_inputs",
    task_run_name=fetch_inputs_name,
    **TRANSFER_OPTIONS,
)
def fetch_inputs(
    inputs: Sequence[InputSource | Mapping[str, Any] | str],
    root: Path | str,
    *,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
    allowed_local_paths: Sequence[str] | None = None,
    partition: tuple[int, int] = (0, 1),
) -> dict[str, Path]:
    """Materialise each input under `root` at its Target, verified; returns Target → local path.

    `allowed_local_paths` is the allow-list for `local` inputs (else `PBP_ALLOWED_LOCAL_PATHS`; default none).
    `partition` `(index, count)`: an S3 prefix gives only that execution's share, as in Bacalhau.
    """
    paths = fetch_all(
        inputs,
        Path(root),
        s3=s3,
        ipfs=ipfs,
        local=local,
        allowed_local_paths=allowed_local_paths,
        partition=partition,
    )
    _logger().info("fetched %d input(s) into %s", len(paths), root)
    return paths


@dispatching(
    "prefect_bacalhau_publish.tasks_async:aget_result",
    name="get_result",
    task_run_name=get_result_name,
    **TRANSFER_OPTIONS,
)
def get_result(
    result: PublishedResult | Mapping[str, Any] | str | Path,
    dest: Path | str,
    *,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
    presigned: bool = False,
) -> Path:
    """Download, verify and extract any published result into `dest` (which must not exist or be empty).

    With `presigned`, an archived S3 result is fetched through a presigned URL, as Bacalhau's requester
    hands it to `bacalhau job get`; otherwise directly with the S3 API.
    """
    spec = resolve_result(result)
    dest = fetch_result(spec, Path(dest), s3=s3, ipfs=ipfs, local=local, presigned=presigned)
    _logger().info("got %s result into %s", spec.type, dest)
    return dest


@dispatching(
    "prefect_bacalhau_publish.tasks_async:arun_job",
    name="run_job",
    task_run_name=run_job_name,
    **JOB_OPTIONS,
)
def run_job(
    command: JobCommand,
    *,
    publisher: PublisherArg | Sequence[PublisherArg] | None,
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
    """Run a job (SPEC §2): inputs materialised, `command` run, results laid out as Bacalhau does, published.

    A callable runs in a child process of its own, as a command does: its own working folder, stdout/stderr,
    `env` and `timeout` (exit code 124). Output lines go to the run's logger as they come: up to 10 000 per
    job (`log_output=N` for another limit, `False` for none), each cut at 4 KiB; the result's files hold all.
    Results are published also for a non-zero exit code (as Bacalhau does); with `fail_on_nonzero` the task
    then fails after publishing. `partition` `(index, count)` makes this one of a job's `count` executions:
    an S3 prefix input gives only its share, and the job sees `BACALHAU_PARTITION_INDEX`/`_COUNT`
    (`run_partitioned` runs all of them). With a list of publishers, the result goes to each in one pass:
    `published` is the first one's, `all_published` all of them in order (`publishers.fanout`).
    With `reuse`, a job whose command, env, result paths, publisher spec and inputs' content are unchanged
    and whose earlier published result still verifies is not run: that earlier `JobResult` comes back,
    marked `reused` (Prefect's cache; reuse.py).
    """
    publisher = as_publishers(publisher) if publisher is not None else None
    context = ExecutionContext.current(job_id=job_id, node_id=node_id)
    name = job_name(command, name)
    log = _logger()
    log.info(
        "job %s: %s, execution %s on %s, %d input(s)%s",
        name,
        context.job_id,
        context.execution_id,
        context.node_id,
        len(inputs),
        f", partition {partition[0]} of {partition[1]}" if partition != (0, 1) else "",
    )
    lines = _line_limit(log_output)
    output_log = OutputLog(_output_logger(log), name, max_lines=lines) if lines else None
    try:
        job = execute_job(
            command,
            publisher=publisher,
            context=context,
            inputs=inputs,
            result_paths=result_paths,
            env=env,
            timeout=timeout,
            s3=s3,
            ipfs=ipfs,
            local=local,
            name=name,
            log=output_log,
            allowed_local_paths=allowed_local_paths,
            partition=partition,
        )
    except FanOutError as exc:  # what was published still gets its artifacts and event
        _record_each(exc.results, context, s3=s3, ipfs=ipfs, name=name)
        raise
    context = job.context
    log.info("job %s: %s exited with %d", name, context.job_id, job.exit_code)
    if job.published is not None:
        key = _record_each(job.all_published or (job.published,), context, s3=s3, ipfs=ipfs, name=name)
        job = job.model_copy(update={"artifact_key": key})
    job = job.model_copy(update=_ids())
    if fail_on_nonzero and job.exit_code != 0:
        raise PublishError(
            f"job {name} ({context.job_id}) exited with {job.exit_code}"
            + (" (its results were published)" if job.published is not None else "")
        )
    return job
