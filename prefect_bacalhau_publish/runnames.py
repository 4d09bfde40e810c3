"""Task run names that say what runs: `run_job[sum] → s3://bucket/runs/{jobID}`, `get_result ← ipfs://Qm…`.

Prefect calls these (as `task_run_name`) when a run starts; they read the run's parameters and never raise:
a parameter they cannot read gives a plainer name, and the task itself reports the error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["fetch_inputs_name", "get_result_name", "publish_result_name", "run_job_name", "target_text"]


def _parameters() -> Mapping[str, Any]:
    from prefect.runtime import task_run

    parameters: Mapping[str, Any] = task_run.parameters
    return parameters


def target_text(spec: Any) -> str:
    """A publisher spec (any form a task takes) as a short target: `s3://bucket/key`, `ipfs`, `local`;
    a list of them joined with ` + `."""
    if spec is None:
        return "no publisher"
    if isinstance(spec, list | tuple):
        return " + ".join(target_text(one) for one in spec) or "no publisher"
    try:
        from .tasks import as_publisher

        publisher = as_publisher(spec)
    except Exception:
        return "?"
    params = publisher.params
    bucket, key = getattr(params, "bucket", None), getattr(params, "key", None)
    return f"s3://{bucket}/{key or ''}" if bucket else publisher.type


def source_text(result: Any) -> str:
    """A published result (spec, mapping, file, artifact key) as where it comes from."""
    from .specs import IPFSParams, PublishedResult, S3Params, URLParams

    spec = result
    if isinstance(result, Mapping):
        try:
            spec = PublishedResult.model_validate(result)
        except Exception:
            return "?"
    if not isinstance(spec, PublishedResult):
        return str(result)
    params = spec.params
    if isinstance(params, S3Params):
        return f"s3://{params.bucket}/{params.key}"
    if isinstance(params, IPFSParams):
        return f"ipfs://{params.cid}"
    if isinstance(params, URLParams):
        return params.url.split("?", 1)[0]
    return spec.type


def run_job_name() -> str:
    from .jobs import job_name

    parameters = _parameters()
    try:
        name = job_name(parameters["command"], parameters.get("name"))
    except Exception:
        name = "job"
    return f"run_job[{name}] → {target_text(parameters.get('publisher'))}"


def publish_result_name() -> str:
    return f"publish_result → {target_text(_parameters().get('spec'))}"


def get_result_name() -> str:
    return f"get_result ← {source_text(_parameters().get('result'))}"


def fetch_inputs_name() -> str:
    inputs = _parameters().get("inputs") or []
    return f"fetch_inputs ← {len(inputs)} input(s)"
