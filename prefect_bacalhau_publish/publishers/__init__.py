"""Publishers by Type: each module exposes `publish(result_dir, spec, context, target) -> PublishedResult`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from ..specs import ExecutionContext, PublishedResult, PublisherSpec

__all__ = ["Publisher", "get_publisher"]


class Publisher(Protocol):
    """Publish the result folder to a target; `target` is the block saying how to reach it (or None)."""

    def __call__(
        self, result_dir: Path, spec: PublisherSpec, context: ExecutionContext, target: Any
    ) -> PublishedResult: ...


_MODULES = {"s3": "s3", "ipfs": "ipfs", "local": "local"}


def get_publisher(type_: str) -> Publisher:
    """The `publish` function registered for a publisher Type."""
    module = importlib.import_module(f"{__name__}.{_MODULES[type_]}")
    publish: Publisher = module.publish
    return publish


def publish_to(
    result_dir: Path,
    spec: PublisherSpec,
    context: ExecutionContext,
    *,
    s3: Any = None,
    ipfs: Any = None,
    local: Any = None,
) -> PublishedResult:
    """Publish with the publisher for `spec.type`, handing it the matching block."""
    if not result_dir.is_dir():
        from ..errors import PublishError

        raise PublishError(f"result folder {result_dir} does not exist or is not a folder")
    target = {"s3": s3, "ipfs": ipfs, "local": local}[spec.type]
    return get_publisher(spec.type)(result_dir, spec, context, target)
