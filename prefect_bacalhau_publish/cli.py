"""`prefect-bacalhau`: get, publish, serve, prune, readdress (SPEC §9). Failures exit non-zero with one line."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, Parameter
from rich.console import Console

from .errors import BacalhauPublishError, FetchError
from .specs import PublishedResult

app = App(name="prefect-bacalhau", help="Bacalhau's result publishers and `get`, for Prefect.")
err = Console(stderr=True)
out = Console()

_MERGE_APPEND = ("stdout", "stderr", "exitCode")


def _blocks(s3_block: str | None, ipfs_block: str | None, local_block: str | None) -> dict[str, Any]:
    from .blocks import IPFSNode, LocalResultServer, S3Storage

    return {
        "s3": S3Storage.load(s3_block) if s3_block else None,
        "ipfs": IPFSNode.load(ipfs_block) if ipfs_block else None,
        "local": LocalResultServer.load(local_block) if local_block else None,
    }


def _flow_run_results(run_id: uuid.UUID) -> list[PublishedResult]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    from .artifacts import spec_from_description

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
                    type=ArtifactFilterType(any_=["table"]),
                )
            )

    artifacts = sorted(asyncio.run(read()), key=lambda a: a.created)
    results = [spec_from_description(a.description) for a in artifacts if a.description]
    if not results:
        raise FetchError(f"flow run {run_id} recorded no published results")
    return results


def resolve_sources(source: str) -> list[PublishedResult]:
    """A spec file, a flow-run id (all its results), or an artifact key → published results."""
    from .tasks import resolve_result

    if not Path(source).exists():
        try:
            return _flow_run_results(uuid.UUID(source))
        except ValueError:
            pass
    return [resolve_result(source)]


def _merge(parts: list[Path], dest: Path) -> None:
    """Merge result folders flat into `dest` with `bacalhau job get`'s rules."""
    for part in parts:
        for path in sorted(part.rglob("*")):
            rel = path.relative_to(part)
            target = dest / rel
            if path.is_dir() and not path.is_symlink():
                if target.exists() and not target.is_dir():
                    raise FetchError(f"cannot merge results as output already exists: {target}. Try --raw")
                target.mkdir(parents=True, exist_ok=True)
            elif target.exists():
                if rel.as_posix() not in _MERGE_APPEND:
                    raise FetchError(f"cannot merge results as output already exists: {target}. Try --raw")
                with open(target, "ab") as into, open(path, "rb") as src:
                    shutil.copyfileobj(src, into)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target, follow_symlinks=False)


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    parent = dest.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.get-", dir=parent) as tmp:
        yield Path(tmp)


@app.command
def get(
    source: str,
    *,
    output: Annotated[Path | None, Parameter(name=["--output", "-o"])] = None,
    raw: bool = False,
    force: bool = False,
    presigned: bool = False,
    s3_block: str | None = None,
    ipfs_block: str | None = None,
    local_block: str | None = None,
) -> None:
    """Download, verify and extract published results.

    Parameters
    ----------
    source
        A published result spec file (JSON/YAML), a Prefect artifact key, or a flow-run id (all its results).
    output
        Destination folder (default ./result-<name>); must be empty or absent unless --force.
    raw
        Keep each result apart in <output>/raw/<n> instead of merging them flat.
    force
        Replace a non-empty destination.
    presigned
        Fetch archived S3 results through a presigned URL, as Bacalhau's requester does.
    s3_block
        Name of a saved S3Storage block (default: AWS default credential chain).
    ipfs_block
        Name of a saved IPFSNode block.
    local_block
        Name of a saved LocalResultServer block.
    """
    from .tasks import get_result

    results = resolve_sources(source)
    dest = output or Path(f"result-{Path(source).stem if Path(source).exists() else source}"[:80])
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not force:
        raise FetchError(f"{dest} is not empty: choose another --output or pass --force to replace it")
    blocks = _blocks(s3_block, ipfs_block, local_block)
    with _staging(dest) as tmp:
        parts: list[Path] = []
        with err.status("") as status:
            for index, result in enumerate(results):
                status.update(f"fetching result {index + 1}/{len(results)} ({result.type}) and verifying it")
                parts.append(get_result.fn(result, tmp / "raw" / str(index), presigned=presigned, **blocks))
        final = tmp / "final"
        final.mkdir()
        if raw or len(parts) == 1:
            if raw:
                shutil.move(str(tmp / "raw"), str(final / "raw"))
            else:
                final.rmdir()
                parts[0].rename(final)
        else:
            _merge(parts, final)
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            dest.unlink()
        elif dest.exists():
            shutil.rmtree(dest)
        final.rename(dest)
    out.print(f"{len(results)} result(s) verified and extracted into {dest}")


@app.command
def publish(
    folder: Path,
    *,
    target: Annotated[str, Parameter(name=["--target", "-p"])],
    s3_block: str | None = None,
    ipfs_block: str | None = None,
    local_block: str | None = None,
    job_id: str | None = None,
) -> None:
    """Publish a result folder and print the published result spec as JSON.

    Parameters
    ----------
    folder
        The result folder to publish.
    target
        Bacalhau's CLI publisher syntax: s3://bucket/key,opt=endpoint=...,opt=region=..., ipfs, or local.
    s3_block
        Name of a saved S3Storage block.
    ipfs_block
        Name of a saved IPFSNode block.
    local_block
        Name of a saved LocalResultServer block.
    job_id
        Job id for the {jobID} placeholder (default: a new one).
    """
    from .publishers import publish_to
    from .specs import ExecutionContext, parse_publisher_string

    spec = parse_publisher_string(target)
    with err.status(f"publishing {folder} to {spec.type}"):
        result = publish_to(
            folder, spec, ExecutionContext.new(job_id=job_id), **_blocks(s3_block, ipfs_block, local_block)
        )
    out.print_json(json.dumps(result.to_bacalhau()))


def main() -> None:
    """Entry point: run the app; a known failure prints one line and exits 1."""
    try:
        app()
    except (BacalhauPublishError, ValueError, OSError) as exc:
        line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        err.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
