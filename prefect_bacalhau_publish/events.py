"""Every publish as a Prefect event (SPEC §6, §7): `bacalhau.result.published`, so a deployment trigger on it
chains deployments across workers (job B runs whenever job A's deployment publishes).

The event's resource is the published result: `prefect.resource.id` `bacalhau.result.<publisher>.<where>`
(`s3.BUCKET/KEY`, `ipfs.CID`, `local.URL`), `prefect.resource.name` `s3://BUCKET/KEY`, the CID or the URL, and
labels a trigger can match (`bacalhau.s3.key: "handoff/*"`). It is related to the flow run and task run that
published it (Prefect adds the flow, deployment, work pool and tags). The payload holds the published result spec
(Bacalhau's JSON, as `get_result` and `PublishedResult.model_validate` read it) and the execution context.

No secret reaches an event: the spec has none (credentials live in blocks; no presigned URL is added, and the
signature of an `s3PreSigned` result's URL is cut off). Emitting never fails a publish. Inside a Prefect run the
event goes to the run's API; outside one it goes to `PREFECT_API_URL` when that is set, and otherwise nowhere
(no throwaway server is started for it). Prefect is imported only when an event is emitted.
"""

from __future__ import annotations

import contextvars
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .context import ExecutionContext
from .specs import IPFSParams, PublishedResult, S3Params, URLParams

if TYPE_CHECKING:
    from prefect.events import Event

__all__ = [
    "EVENT",
    "RESOURCE_PREFIX",
    "emit_published",
    "event_id",
    "event_payload",
    "event_related",
    "event_resource",
    "public_spec",
]

EVENT = "bacalhau.result.published"
"""The name of the event every publish emits."""
RESOURCE_PREFIX = "bacalhau.result."
"""Every published result's resource id starts with this, then the publisher (`s3`, `ipfs`, `local`)."""

_NAMESPACE = uuid.UUID("5f0c3a52-6f1e-4d0b-9d43-2b9e8e1f7a10")
_log = logging.getLogger("prefect_bacalhau_publish.events")


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def public_spec(result: PublishedResult) -> dict[str, Any]:
    """The result's Bacalhau JSON with nothing that grants access: a presigned URL loses its query (the
    signature) and any URL its user:password part. The specs this package publishes carry neither."""
    spec = result.model_dump(by_alias=True, exclude_none=True, mode="json")
    params: dict[str, Any] = spec.get("Params", {})
    for name in ("URL", "Endpoint"):
        if isinstance(params.get(name), str):
            params[name] = _without_userinfo(params[name])
    if isinstance(params.get("PreSignedURL"), str):
        parts = urlsplit(_without_userinfo(params["PreSignedURL"]))
        params["PreSignedURL"] = urlunsplit(parts._replace(query="", fragment=""))
    source = params.get("SourceSpec")
    if isinstance(source, dict) and isinstance(source.get("Endpoint"), str):
        source["Endpoint"] = _without_userinfo(source["Endpoint"])
    return spec


def _where(result: PublishedResult) -> tuple[str, str, str]:
    """(publisher, the resource id's tail, the resource name) of a published result."""
    params = result.params
    if isinstance(params, S3Params):  # s3 and s3PreSigned
        return "s3", f"{params.bucket}/{params.key}", f"s3://{params.bucket}/{params.key}"
    if isinstance(params, IPFSParams):
        return "ipfs", params.cid, params.cid
    if isinstance(params, URLParams):
        url = _without_userinfo(params.url)
        return "local", url, url
    raise ValueError(f"no event resource for a {result.type} result")


def event_resource(
    result: PublishedResult, context: ExecutionContext, *, job_name: str | None = None
) -> dict[str, str]:
    """The event's resource: id `bacalhau.result.<publisher>.<bucket/key | cid | url>`, its name, and labels
    to match on (publisher, result Type, S3 bucket and key, job and execution ids, the job's name if any)."""
    publisher, tail, name = _where(result)
    resource = {
        "prefect.resource.id": f"{RESOURCE_PREFIX}{publisher}.{tail}",
        "prefect.resource.name": name,
        "bacalhau.publisher": publisher,
        "bacalhau.result.type": result.type,
        "bacalhau.job.id": context.job_id,
        "bacalhau.execution.id": context.execution_id,
    }
    params = result.params
    if isinstance(params, S3Params):
        resource["bacalhau.s3.bucket"] = params.bucket
        resource["bacalhau.s3.key"] = params.key
    if job_name:
        resource["bacalhau.job.name"] = job_name
    return resource


def event_payload(
    result: PublishedResult, context: ExecutionContext, *, job_name: str | None = None
) -> dict[str, Any]:
    """The event's payload: `result` (the published result spec, Bacalhau's JSON) and the execution context."""
    payload: dict[str, Any] = {
        "result": public_spec(result),
        "job_id": context.job_id,
        "execution_id": context.execution_id,
        "node_id": context.node_id,
        "published_at": context.published_at.isoformat(),
    }
    if job_name:
        payload["job_name"] = job_name
    return payload


def event_id(result: PublishedResult, context: ExecutionContext) -> uuid.UUID:
    """The same for the same execution publishing the same spec, so emitting again does not count twice."""
    spec = json.dumps(public_spec(result), sort_keys=True)
    return uuid.uuid5(_NAMESPACE, f"{context.execution_id}\n{spec}")


def event_related() -> list[dict[str, str]]:
    """The flow run and task run publishing now (Prefect's own ids and roles), as Prefect relates its events."""
    from prefect.context import FlowRunContext, TaskRunContext

    related: list[dict[str, str]] = []
    flow_ctx = FlowRunContext.get()
    task_ctx = TaskRunContext.get()
    flow_run = flow_ctx.flow_run if flow_ctx is not None else None
    flow_run_id = flow_run.id if flow_run is not None else None
    if flow_run_id is None and task_ctx is not None:
        flow_run_id = task_ctx.task_run.flow_run_id
    if flow_run_id is not None:
        resource = {
            "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
            "prefect.resource.role": "flow-run",
        }
        if flow_run is not None and flow_run.name:
            resource["prefect.resource.name"] = flow_run.name
        related.append(resource)
    if task_ctx is not None:
        task_run = task_ctx.task_run
        related.append(
            {
                "prefect.resource.id": f"prefect.task-run.{task_run.id}",
                "prefect.resource.role": "task-run",
                "prefect.resource.name": task_run.name,
            }
        )
    return related


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def _api_configured() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def emit_published(
    result: PublishedResult, context: ExecutionContext, *, job_name: str | None = None
) -> Event | None:
    """Emit `bacalhau.result.published` for one published result; the event, or None when none was sent.

    Sent inside a Prefect run, or outside one when `PREFECT_API_URL` is set; never raises (a failure is logged
    as a warning, and the event is lost, not the publish). Prefect sends events in the background: an
    unreachable API delays nothing here.
    """
    try:
        if not (_in_run() or _api_configured()):
            return None
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.events import emit_event

        resource = event_resource(result, context, job_name=job_name)
        related = event_related()
        payload = event_payload(result, context, job_name=job_name)

        def send() -> Event | None:
            # Prefect's events worker adds the runs of the sender's context to each event, but restores only
            # the context variables the sender has set: one never set (no task run here, or no run at all)
            # keeps the value of the worker's own loop, i.e. the run that first emitted any event in this
            # process. Setting both (to None when absent) relates the event to this publish's runs only.
            for run_context in (FlowRunContext, TaskRunContext):
                variable: contextvars.ContextVar[Any] = run_context.__var__
                variable.set(run_context.get())
            return emit_event(
                EVENT, resource=resource, related=related, payload=payload, id=event_id(result, context)
            )

        return contextvars.copy_context().run(send)
    except Exception as exc:  # an event is a notification: it never fails the publish it reports
        _log.warning("could not emit %s for job %s: %s: %s", EVENT, context.job_id, type(exc).__name__, exc)
        return None
