"""Publishers by Type: each module exposes `publish(result_dir, spec, context, target) -> PublishedResult`.

A publisher reports the bytes it reads from the result folder with `progress.advance`; `publish_to` meters
the whole publish against the folder's size (`transfer.metered`).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..progress import listening, submit
from ..transfer import Transfer, location, metered, tree_size

if TYPE_CHECKING:
    from ..kubo.node import NodeSettings
    from ..specs import ExecutionContext, PublishedResult, PublisherSpec

__all__ = ["Publisher", "get_publisher", "publish_to", "publish_to_ipfs"]


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
    target = {"s3": s3, "ipfs": ipfs, "local": local}[spec.type]
    with _metered(result_dir, lambda: _destination(spec, context, target)) as transfer:
        result = get_publisher(spec.type)(result_dir, spec, context, target)
        transfer.target = location(result.params)
    return result


def publish_to_ipfs(
    result_dir: Path, node: NodeSettings | None = None, *, meanwhile: Callable[[], object] | None = None
) -> PublishedResult:
    """`publish_to` with the `ipfs` spec (it has no params), whose upload starts before the spec models load.

    For a fresh process such as the CLI's `publish -p ipfs`: pydantic and the models take about 0.13 s to
    import, which here pass while the node takes the bytes (from the first bytes read), not before it gets
    any; so does `meanwhile`, run in the caller's thread (the CLI imports what prints the answer).
    """
    from ..kubo.node import KuboNode
    from .ipfs import publish_folder, published

    with _metered(result_dir, lambda: "ipfs") as transfer:
        with ThreadPoolExecutor(1, thread_name_prefix="ipfs-publish") as pool:
            sending = threading.Event()  # set by the first bytes read, so imports do not delay the scan
            with listening(lambda nbytes: sending.set()):
                cid = submit(pool, publish_folder, result_dir, node if node is not None else KuboNode())
            cid.add_done_callback(lambda future: sending.set())
            sending.wait()
            importlib.import_module("..specs", __name__)
            if meanwhile is not None:
                meanwhile()
            result = published(cid.result())
        transfer.target = location(result.params)
    return result


@contextmanager
def _metered(result_dir: Path, destination: Callable[[], str]) -> Iterator[Transfer]:
    """`transfer.metered` over the folder's file bytes (known up front); a missing folder is refused first."""
    if not result_dir.is_dir():
        from ..errors import PublishError

        raise PublishError(f"result folder {result_dir} does not exist or is not a folder")
    files, size = tree_size(result_dir)
    with metered("published", "to", destination(), total=size) as transfer:
        transfer.files = files
        yield transfer


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
