"""Published result spec → Prefect table and link artifacts, and back (SPEC §8)."""

from __future__ import annotations

import json
import re
from typing import Any, cast

from prefect.artifacts import Artifact, create_link_artifact, create_table_artifact
from prefect.client.schemas.objects import Artifact as ArtifactResponse

from .errors import FetchError
from .specs import IPFSParams, PublishedResult, S3Params, URLParams, load_result

__all__ = ["artifact_key", "job_artifact_key", "load_artifact_result", "record_result"]

_SPEC_MARKER = "Published result spec (Bacalhau JSON):"


def artifact_key(job_id: str, execution_id: str | None = None) -> str:
    """A Prefect artifact key (lower-case letters, digits, dashes) derived from the job (and execution)."""
    raw = f"bacalhau-{job_id}" + (f"-{execution_id}" if execution_id else "")
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")[:200]


def job_artifact_key(flow_name: str, job_name: str) -> str:
    """The key a job's results keep across runs of its flow (each run adds a version): `bacalhau-FLOW-JOB`."""
    raw = f"{flow_name}-{job_name}"
    if not raw.lower().startswith("bacalhau"):
        raw = f"bacalhau-{raw}"
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")[:200]


def result_link(
    result: PublishedResult, *, presigned_url: str | None = None, gateway_url: str | None = None
) -> str:
    """Where a person can fetch the result: presigned S3 URL, IPFS gateway URL, or the local server URL."""
    params = result.params
    if isinstance(params, URLParams):
        return params.url
    if isinstance(params, IPFSParams):
        base = (gateway_url or "https://ipfs.io").rstrip("/")
        return f"{base}/ipfs/{params.cid}"
    if isinstance(params, S3Params):
        if presigned_url:
            return presigned_url
        endpoint = (params.endpoint or f"https://s3.{params.region or 'us-east-1'}.amazonaws.com").rstrip("/")
        return f"{endpoint}/{params.bucket}/{params.key}"
    raise ValueError(f"no link for a {result.type} result")


def _description(result: PublishedResult, title: str) -> str:
    spec = json.dumps(result.to_bacalhau(), sort_keys=True)
    return f"{title}\n\n{_SPEC_MARKER}\n\n```json\n{spec}\n```"


def record_result(
    result: PublishedResult,
    *,
    key: str,
    title: str,
    presigned_url: str | None = None,
    gateway_url: str | None = None,
) -> str:
    """Create the table artifact (Type and every param) and the link artifact; returns the table's key."""
    rows: list[dict[str, Any]] = [{"Field": "Type", "Value": result.type}]
    rows += [{"Field": name, "Value": str(value)} for name, value in result.to_bacalhau()["Params"].items()]
    create_table_artifact(rows, key=key, description=_description(result, title), _sync=True)  # type: ignore[call-arg]
    create_link_artifact(
        result_link(result, presigned_url=presigned_url, gateway_url=gateway_url),
        link_text=f"{result.type} result",
        key=f"{key}-link"[:255],
        description=_description(result, title),
        _sync=True,  # type: ignore[call-arg]
    )
    return key


def spec_from_description(description: str | None) -> PublishedResult:
    """The published result embedded in an artifact description."""
    if not description or _SPEC_MARKER not in description:
        raise FetchError(
            "that artifact holds no published result spec (was it made by prefect-bacalhau-publish?)"
        )
    body = description.split(_SPEC_MARKER, 1)[1]
    match = re.search(r"```json\n(.*?)\n```", body, re.DOTALL)
    if match is None:
        raise FetchError("the artifact's published result spec is damaged")
    return load_result(match.group(1))


def load_artifact_result(key: str) -> PublishedResult:
    """The latest published result recorded under artifact `key`."""
    artifact = cast(ArtifactResponse | None, Artifact.get(key, _sync=True))  # type: ignore[call-arg]
    if artifact is None:
        raise FetchError(
            f"no artifact with key {key!r} on the Prefect server: check the key in the Artifacts page"
        )
    return spec_from_description(artifact.description)
