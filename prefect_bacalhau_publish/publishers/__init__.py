"""Publishers by Type: each module exposes `publish(result_dir, spec, context, target) -> PublishedResult`.

A publisher reports the bytes it reads from the result folder with `progress.advance`; `publish_to` meters
the whole publish against the folder's size (`transfer.metered`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from ..specs import ExecutionContext, PublishedResult, PublisherSpec
from ..transfer import location, metered, tree_size

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
    """Publish with the publisher for `spec.type`, handing it the matching block; metered (`transfer`)."""
    if not result_dir.is_dir():
        from ..errors import PublishError

        raise PublishError(f"result folder {result_dir} does not exist or is not a folder")
    target = {"s3": s3, "ipfs": ipfs, "local": local}[spec.type]
    files, size = tree_size(result_dir)  # a publish moves the folder's file bytes: the total, known up front
    with metered("published", "to", _destination(spec, context, target), total=size) as transfer:
        transfer.files = files
        result = get_publisher(spec.type)(result_dir, spec, context, target)
        transfer.target = location(result.params)
    return result


def _destination(spec: PublisherSpec, context: ExecutionContext, target: Any) -> str:
    """Where the result goes, as far as is known before publishing (the log line names the outcome)."""
    from ..naming import ARCHIVE_SUFFIX, DEFAULT_PORT, render_key

    try:
        if spec.type == "s3":
            params = spec.s3
            key = render_key(params.key, context=context, archive=params.archived, warn=False)
            return f"s3://{params.bucket}/{key}"
        if spec.type == "local":
            base = target.base_url() if target is not None else f"http://127.0.0.1:{DEFAULT_PORT}"
            return f"{base}/{context.execution_id}{ARCHIVE_SUFFIX}"
    except Exception:  # a bad spec or block: the publisher says what is wrong with it
        pass
    return spec.type
