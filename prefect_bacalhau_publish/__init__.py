"""prefect-bacalhau-publish: Bacalhau's result publishers (S3, IPFS, local) and input sources for Prefect 3."""

from __future__ import annotations

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
from .specs import ExecutionContext, InputSource, PublishedResult, PublisherSpec, ResultPath, SourceSpec
from .tasks import fetch_inputs, get_result, publish_result, run_job

__all__ = [
    "BacalhauPublishError",
    "ChecksumMismatchError",
    "ExecutionContext",
    "FetchError",
    "IPFSNode",
    "IPFSPublishError",
    "InputSource",
    "JobResult",
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
    "fetch_inputs",
    "get_result",
    "publish_result",
    "run_job",
]
