"""Prefect tasks over the publishers and sources: retries on transient failures only, run logging, artifacts."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.exceptions import MissingContextError

from .artifacts import artifact_key, load_artifact_result, record_result
from .blocks import IPFSNode, LocalResultServer, S3Storage, S3Target
from .errors import FetchError, PublishError
from .jobs import DEFAULT_RESULT_PATHS, JobCommand, JobResult, execute_job, fetch_all
from .parse import validate_spec
from .presign import presign
from .publishers import publish_to
from .s3errors import is_transient
from .sources import fetch_source
from .sources.place import beside, place
from .specs import (
    ExecutionContext,
    InputSource,
    PublishedResult,
    PublisherSpec,
    ResultPath,
    S3Params,
    load_result,
    parse_publisher_string,
)

__all__ = ["fetch_inputs", "get_result", "publish_result", "record_published", "run_job"]

_fallback_logger = logging.getLogger("prefect_bacalhau_publish")


def _logger() -> Any:
    try:
        return get_run_logger()
    except MissingContextError:
        return _fallback_logger


def _retry_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry only failures worth retrying (S3 throttling/5xx/dropped connections), never 403/404/bad specs."""
    try:
        state.result()
    except BaseException as exc:
        return is_transient(exc)
    return False


def as_publisher(spec: PublisherSpec | Mapping[str, Any] | str) -> PublisherSpec:
    """A PublisherSpec from itself, its Bacalhau JSON object, or Bacalhau's CLI syntax; SpecError if malformed."""
    if isinstance(spec, PublisherSpec):
        return spec
    if isinstance(spec, str):
        return parse_publisher_string(spec)
    return validate_spec(PublisherSpec, spec, "invalid publisher")


def _presign(result: PublishedResult, s3: S3Target | None) -> str | None:
    params = result.params
    if not isinstance(params, S3Params) or params.is_prefix:
        return None
    return presign(params, S3Storage.coerce(s3)).pre_signed_url


def record_published(
    result: PublishedResult,
    context: ExecutionContext,
    *,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    title: str | None = None,
) -> str | None:
    """Record the result as table + link artifacts when running inside Prefect; returns the artifact key."""
    if TaskRunContext.get() is None:
        from prefect.context import FlowRunContext

        if FlowRunContext.get() is None:
            return None
    key = artifact_key(context.job_id)
    gateway = ipfs.gateway_url if ipfs is not None else None
    record_result(
        result,
        key=key,
        title=title or f"Result of job {context.job_id} (execution {context.execution_id})",
        presigned_url=_presign(result, s3),
        gateway_url=gateway,
    )
    return key


@task(
    name="publish_result",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=_retry_transient,
)
def publish_result(
    result_dir: Path | str,
    spec: PublisherSpec | Mapping[str, Any] | str,
    *,
    context: ExecutionContext | None = None,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
) -> PublishedResult:
    """Publish a result folder with the publisher `spec` names; records the artifacts; returns the result spec.

    `spec` is a PublisherSpec, its JSON object, or Bacalhau's CLI syntax (`s3://bucket/key,opt=...`).
    """
    spec = as_publisher(spec)
    context = context or ExecutionContext.current()
    log = _logger()
    log.info(
        "publishing %s to %s (job %s, execution %s)",
        result_dir,
        spec.type,
        context.job_id,
        context.execution_id,
    )
    result = publish_to(Path(result_dir), spec, context, s3=s3, ipfs=ipfs, local=local)
    log.info("published: %s", result.model_dump_json(by_alias=True, exclude_none=True))
    record_published(result, context, s3=s3, ipfs=ipfs)
    return result


@task(
    name="fetch_inputs",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=_retry_transient,
)
def fetch_inputs(
    inputs: Sequence[InputSource],
    root: Path | str,
    *,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
) -> dict[str, Path]:
    """Materialise each input under `root` at its Target, verified; returns Target → local path."""
    paths = fetch_all(inputs, Path(root), s3=s3, ipfs=ipfs, local=local)
    _logger().info("fetched %d input(s) into %s", len(paths), root)
    return paths


def resolve_result(result: PublishedResult | Mapping[str, Any] | str | Path) -> PublishedResult:
    """A published result from a spec object, a JSON/YAML file or text, or a Prefect artifact key."""
    if isinstance(result, PublishedResult):
        return result
    if isinstance(result, Mapping):
        return load_result(result)
    path = Path(result)
    if path.is_file():
        return load_result(path)
    text = str(result)
    if text.lstrip().startswith(("{", "Type", "type")):
        return load_result(text)
    return load_artifact_result(text)


@task(
    name="get_result",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=_retry_transient,
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
    dest = Path(dest)
    if presigned and isinstance(spec.params, S3Params) and spec.archived:
        signed = presign(spec.params, S3Storage.coerce(s3))
        spec = PublishedResult.model_validate({"Type": "s3PreSigned", "Params": signed})
    source = spec.to_input_source("/result").source
    with beside(dest, ".pbp-get-") as tmp:
        staging = tmp / "result"
        fetch_source(source, staging, s3=s3, ipfs=ipfs, local=local)
        if not staging.is_dir():
            raise FetchError(f"{spec.type} result did not materialise as a folder")
        place(staging, dest)
    _logger().info("got %s result into %s", spec.type, dest)
    return dest


@task(
    name="run_job",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=[2],
    retry_condition_fn=_retry_transient,
)
def run_job(
    command: JobCommand,
    *,
    publisher: PublisherSpec | Mapping[str, Any] | str | None,
    inputs: Sequence[InputSource] = (),
    result_paths: Sequence[ResultPath] = DEFAULT_RESULT_PATHS,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    job_id: str | None = None,
    node_id: str | None = None,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
    fail_on_nonzero: bool = False,
) -> JobResult:
    """Run a job (SPEC §2): inputs materialised, `command` run, results laid out as Bacalhau does, published.

    Results are published also for a non-zero exit code (as Bacalhau does); with `fail_on_nonzero` the task
    then fails after publishing.
    """
    publisher = as_publisher(publisher) if publisher is not None else None
    context = ExecutionContext.current(job_id=job_id, node_id=node_id)
    log = _logger()
    log.info(
        "job %s: execution %s on %s, %d input(s)",
        context.job_id,
        context.execution_id,
        context.node_id,
        len(inputs),
    )
    code, published, context = execute_job(
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
    )
    log.info("job %s exited with %d", context.job_id, code)
    key = None
    if published is not None:
        log.info("published: %s", published.model_dump_json(by_alias=True, exclude_none=True))
        key = record_published(published, context, s3=s3, ipfs=ipfs)
    if fail_on_nonzero and code != 0:
        raise PublishError(f"job {context.job_id} exited with {code} (its results were published)")
    return JobResult(exit_code=code, published=published, context=context, artifact_key=key)
