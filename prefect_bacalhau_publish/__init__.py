"""prefect-bacalhau-publish: Bacalhau's result publishers (S3, IPFS, local) and input sources for Prefect 3.

Every name below is imported from its module on first use (PEP 562), so `import prefect_bacalhau_publish`
(and the CLI) does not pay for Prefect or boto3 until a block or a task is asked for. When Prefect is loaded
already (it imports this package as a collection, through the `prefect.collections` entry point), the
block classes are defined at once, so Prefect's block registry knows their types.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .blocks import IPFSNode, LocalResultServer, S3Storage
    from .errors import (
        BacalhauPublishError,
        ChecksumMismatchError,
        FetchError,
        IPFSPublishError,
        LocalPublishError,
        PublishError,
        S3PublishError,
        SpecError,
        UnsafeArchiveError,
    )
    from .jobs import JobResult
    from .kubo.node import KuboNode
    from .partition import partition_objects
    from .partitioned import arun_partitioned, run_partitioned
    from .publishers.fanout import FanOutError
    from .reuse import REUSE
    from .specs import ExecutionContext, InputSource, PublishedResult, PublisherSpec, ResultPath, SourceSpec
    from .tasks import fetch_inputs, get_result, publish_result, run_job
    from .tasks_async import afetch_inputs, aget_result, apublish_result, arun_job

_MODULES = {
    "IPFSNode": "blocks",
    "LocalResultServer": "blocks",
    "S3Storage": "blocks",
    "BacalhauPublishError": "errors",
    "ChecksumMismatchError": "errors",
    "FetchError": "errors",
    "IPFSPublishError": "errors",
    "LocalPublishError": "errors",
    "PublishError": "errors",
    "S3PublishError": "errors",
    "SpecError": "errors",
    "UnsafeArchiveError": "errors",
    "JobResult": "jobs",
    "KuboNode": "kubo.node",
    "ExecutionContext": "specs",
    "InputSource": "specs",
    "PublishedResult": "specs",
    "PublisherSpec": "specs",
    "ResultPath": "specs",
    "SourceSpec": "specs",
    "fetch_inputs": "tasks",
    "get_result": "tasks",
    "publish_result": "tasks",
    "run_job": "tasks",
    "afetch_inputs": "tasks_async",
    "aget_result": "tasks_async",
    "apublish_result": "tasks_async",
    "arun_job": "tasks_async",
    "partition_objects": "partition",
    "run_partitioned": "partitioned",
    "arun_partitioned": "partitioned",
    "REUSE": "reuse",
    "FanOutError": "publishers.fanout",
}

__all__ = [
    "REUSE",
    "BacalhauPublishError",
    "ChecksumMismatchError",
    "ExecutionContext",
    "FanOutError",
    "FetchError",
    "IPFSNode",
    "IPFSPublishError",
    "InputSource",
    "JobResult",
    "KuboNode",
    "LocalPublishError",
    "LocalResultServer",
    "PublishError",
    "PublishedResult",
    "PublisherSpec",
    "ResultPath",
    "S3PublishError",
    "S3Storage",
    "SourceSpec",
    "SpecError",
    "UnsafeArchiveError",
    "afetch_inputs",
    "aget_result",
    "apublish_result",
    "arun_job",
    "arun_partitioned",
    "fetch_inputs",
    "get_result",
    "partition_objects",
    "publish_result",
    "run_job",
    "run_partitioned",
]


def __getattr__(name: str) -> Any:
    """Import an exported name's module on first use and keep the name here."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if "prefect" in sys.modules:
    importlib.import_module(".blocks", __name__)
