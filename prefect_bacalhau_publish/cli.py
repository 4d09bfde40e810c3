"""`prefect-bacalhau`: get, publish, serve, prune, readdress (SPEC §9). Failures exit non-zero with one line."""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from cyclopts import App, Parameter

from .errors import BacalhauPublishError, FetchError

if TYPE_CHECKING:
    import uuid

    from rich.console import Console

    from .specs import PublishedResult

# Start-up is part of every command's time: Prefect, boto3 and the Kubo client are imported only on the
# paths that need them (a block, an artifact key or a flow-run id named; an S3 result; IPFS).

# Plain-text help: markdown would swallow `<name>`-style placeholders, and importing it is a third of `--help`.
app = App(
    name="prefect-bacalhau",
    help="Bacalhau's result publishers and get, for Prefect.",
    help_format="plaintext",
    suppress_keyboard_interrupt=False,  # main() reports Ctrl-C: one line, exit 130
)


@functools.cache
def _console(stderr: bool) -> Console:
    """Rich's console for stderr or stdout, made on first use: Rich takes 25 ms to import, which the IPFS
    publish spends while the node takes the bytes (`publish_to_ipfs(meanwhile=...)`)."""
    from rich.console import Console

    # on stdout, a path or URL stays on one line, whatever the terminal's width
    return Console(stderr=True) if stderr else Console(soft_wrap=True)


def _stderr_is_terminal() -> bool:
    """Whether Rich takes stderr for a terminal; without importing Rich when stderr is no TTY and neither
    TTY_COMPATIBLE=1 nor FORCE_COLOR says otherwise (Rich's own rules; scripts, logs and benchmarks)."""
    if sys.stderr.isatty() or os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR"):
        return _console(True).is_terminal
    return False


_MERGE_APPEND = ("stdout", "stderr", "exitCode")
_SPEC_SUFFIXES = (".json", ".yaml", ".yml")


def _blocks(
    s3_block: str | None,
    ipfs_block: str | None,
    local_block: str | None,
    ipfs_api: str | None = None,
    *,
    ipfs: bool = True,
) -> dict[str, Any]:
    """The blocks named on the command line; an IPFS node (only when `ipfs` is used) from --ipfs-block, else
    --ipfs-api, else the running daemon's `$IPFS_PATH/api` file (as `ipfs` finds it), else the default."""
    blocks: dict[str, Any] = {"s3": _s3_block(s3_block) if s3_block else None, "ipfs": None, "local": None}
    if ipfs_block:
        from .blocks import IPFSNode

        blocks["ipfs"] = IPFSNode.load(ipfs_block)
    elif ipfs and (address := ipfs_api or _daemon_api()):
        from .kubo.node import KuboNode

        blocks["ipfs"] = KuboNode(api_address=address)
    if local_block:
        from .blocks import LocalResultServer

        blocks["local"] = LocalResultServer.load(local_block)
    return blocks


def _daemon_api() -> str | None:
    """The RPC address a running Kubo daemon wrote to `$IPFS_PATH/api` (default ~/.ipfs/api), if any."""
    repo = Path(os.environ.get("IPFS_PATH") or Path.home() / ".ipfs")
    try:
        return (repo / "api").read_text().strip() or None
    except OSError:
        return None


def _s3_block(name: str) -> Any:
    """`NAME` is a saved S3Storage block; `TYPE-SLUG/NAME` any block an `s3=` parameter takes (a prefect-aws
    `s3-bucket/...`, `aws-credentials/...` or `minio-credentials/...`)."""
    from prefect.blocks.core import Block

    from .blocks import S3Storage

    loaded: Any = Block.load(name) if "/" in name else S3Storage.load(name)
    return S3Storage.coerce(loaded)


def _flow_run_results(run_id: uuid.UUID) -> list[PublishedResult]:
    import asyncio

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


def _check_spec_path(source: str) -> None:
    """Refuse at once a SOURCE written as a file path (a `/` or a spec suffix) that is no file: artifact keys
    and flow-run ids hold neither, so looking it up would only start Prefect to blame an artifact key."""
    if source.lstrip().startswith(("{", "Type", "type")):  # spec text, which resolve_result reads as such
        return
    if "/" not in source and os.sep not in source and not source.lower().endswith(_SPEC_SUFFIXES):
        return
    path = Path(source)
    if path.is_dir():
        raise IsADirectoryError(f"{source} is a folder, not a spec file: name the .json or .yaml file in it")
    if not path.exists():
        raise FileNotFoundError(
            f"spec file {source} does not exist: check the path (an artifact key holds no '/' or '.')"
        )


def resolve_sources(source: str) -> list[PublishedResult]:
    """A spec file, a flow-run id (all its results), or an artifact key → published results."""
    from .resolve import resolve_result

    if not Path(source).exists():
        import uuid

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
def _progress() -> Iterator[Callable[[str], None]]:
    """A Rich progress line on stderr: the bytes transferred, against their total and with the time left
    once the transfer knows it; yields a function that starts the line over under a new label, as `get`
    does for each result.

    Only on a terminal: elsewhere Rich would leave an empty line in the log or pipe.
    """
    if not _stderr_is_terminal():
        yield lambda label: None
        return
    from rich.progress import (
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from .progress import listening

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console(True), transient=True) as bar:
        task = [bar.add_task("starting", total=None)]

        def start_over(label: str) -> None:  # between transfers, never during one
            bar.remove_task(task[0])
            task[0] = bar.add_task(label, total=None)

        with listening(
            lambda nbytes: bar.advance(task[0], nbytes),
            expected=lambda total: bar.update(task[0], total=total),
        ):
            yield start_over


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
    ipfs_api: str | None = None,
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
        Name of a saved S3Storage block, or TYPE/NAME of a prefect-aws s3-bucket, aws-credentials or minio-credentials block (default: AWS default credential chain).
    ipfs_block
        Name of a saved IPFSNode block.
    ipfs_api
        RPC API of the Kubo node, without a block (default: the running daemon's $IPFS_PATH/api, else /ip4/127.0.0.1/tcp/5001).
    local_block
        Name of a saved LocalResultServer block.
    """
    from .resolve import fetch_result
    from .sources.place import beside

    # Everything that can be refused without the network is, before any lookup or download.
    _check_spec_path(source)
    dest = output or Path(f"result-{Path(source).stem if Path(source).exists() else source}"[:80])
    if dest.exists() and not force:
        if not dest.is_dir():
            raise FetchError(f"{dest} is a file: choose another --output or pass --force to replace it")
        if any(dest.iterdir()):
            raise FetchError(f"{dest} is not empty: choose another --output or pass --force to replace it")
    with beside(dest, f".{dest.name}.get-") as tmp:  # refuses a destination whose folder is not writable
        results = resolve_sources(source)
        uses_ipfs = any(result.type == "ipfs" for result in results)
        blocks = _blocks(s3_block, ipfs_block, local_block, ipfs_api, ipfs=uses_ipfs)
        parts: list[Path] = []
        with _progress() as bar:
            for index, result in enumerate(results):
                bar(f"result {index + 1}/{len(results)} ({result.type})")
                parts.append(fetch_result(result, tmp / "raw" / str(index), presigned=presigned, **blocks))
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
    _console(False).print(f"{len(results)} result(s) verified and extracted into {dest}")


@app.command
def publish(
    folder: Path,
    *,
    target: Annotated[str, Parameter(name=["--target", "-p"])],
    s3_block: str | None = None,
    ipfs_block: str | None = None,
    ipfs_api: str | None = None,
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
        Name of a saved S3Storage block, or TYPE/NAME of a prefect-aws s3-bucket or credentials block.
    ipfs_block
        Name of a saved IPFSNode block.
    ipfs_api
        RPC API of the Kubo node, without a block (default: the running daemon's $IPFS_PATH/api, else /ip4/127.0.0.1/tcp/5001).
    local_block
        Name of a saved LocalResultServer block.
    job_id
        Job id for the {jobID} placeholder (default: a new one).
    """
    if target.strip().lower() == "ipfs":  # no params to check: the upload starts before the spec models load
        from .publishers import publish_to_ipfs

        with _progress() as bar:
            bar(f"publishing {folder.name} to ipfs")
            blocks = _blocks(s3_block, ipfs_block, local_block, ipfs_api)
            result = publish_to_ipfs(folder, blocks["ipfs"], meanwhile=lambda: _console(False))
        _console(False).print_json(json.dumps(result.to_bacalhau()))
        return
    from .publishers import publish_to
    from .specs import ExecutionContext, parse_publisher_string

    spec = parse_publisher_string(target)
    with _progress() as bar:
        bar(f"publishing {folder.name} to {spec.type}")
        result = publish_to(
            folder,
            spec,
            ExecutionContext.new(job_id=job_id),
            **_blocks(s3_block, ipfs_block, local_block, ipfs_api, ipfs=spec.type == "ipfs"),
        )
    _console(False).print_json(json.dumps(result.to_bacalhau()))


def _local_config(block: str | None, **overrides: Any) -> Any:
    from pydantic import ValidationError

    from .blocks import LocalResultServer

    config = cast(LocalResultServer, LocalResultServer.load(block)) if block else LocalResultServer()
    changes = {name: value for name, value in overrides.items() if value is not None}
    if not changes:
        return config
    try:  # validated like the block itself: a negative size or age is refused, never applied
        return LocalResultServer.model_validate({**config.model_dump(exclude_unset=True), **changes})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise ValueError(f"invalid setting: {problems}") from None


@app.command
def serve(
    *,
    host: str | None = None,
    port: int | None = None,
    storage_dir: Path | None = None,
    block: str | None = None,
) -> None:
    """Run the local result server (GET/HEAD with Range, nothing outside the storage folder).

    A missing storage folder is created (mode 0700, as the local publisher creates it); a port in use, out of
    range, or a storage path that is a file is refused before the server starts.

    Parameters
    ----------
    host
        Interface to listen on (default: the block's, 0.0.0.0).
    port
        Port to listen on (default: the block's, 6001); 0 takes a free port.
    storage_dir
        Folder served (default: the block's).
    block
        Name of a saved LocalResultServer block to start from.
    """
    if port is not None and not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is out of range: give 0 to 65535 (0 takes a free port)")
    from .server import serve as run_server

    run_server(_local_config(block, storage_dir=storage_dir), host=host, port=port)


@app.command
def prune(
    *,
    storage_dir: Path | None = None,
    max_age_hours: float | None = None,
    max_total_bytes: int | None = None,
    block: str | None = None,
) -> None:
    """Apply retention to the local result folder once: by age, then by total size (oldest first).

    Parameters
    ----------
    storage_dir
        Folder to prune (default: the block's).
    max_age_hours
        Delete results older than this many hours (default: the block's max_age).
    max_total_bytes
        Delete the oldest results while the folder holds more (default: the block's).
    block
        Name of a saved LocalResultServer block to start from.
    """
    from datetime import timedelta

    from .retention import prune as prune_folder

    config = _local_config(
        block,
        storage_dir=storage_dir,
        max_age=timedelta(hours=max_age_hours) if max_age_hours is not None else None,
        max_total_bytes=max_total_bytes,
    )
    if not Path(config.storage_dir).is_dir():
        raise FetchError(
            f"storage folder {config.storage_dir} does not exist or is not a folder: check --storage-dir"
        )
    if config.max_age is None and config.max_total_bytes is None:
        raise FetchError(
            "nothing to prune by: give --max-age-hours or --max-total-bytes (or set them on the block)"
        )
    removed = prune_folder(
        Path(config.storage_dir), max_age=config.max_age, max_total_bytes=config.max_total_bytes
    )
    for path in removed:
        _console(False).print(f"removed {path}")
    _console(False).print(f"{len(removed)} result(s) removed from {config.storage_dir}")


@app.command
def readdress(old: str, new: str, files: list[Path]) -> None:
    """Rewrite local-result URLs under OLD (e.g. http://10.0.0.5:6001) to NEW in spec files, in place.

    The result server answers for any host name, so after a node's address or port changes only the URLs in
    the saved specs need to change; the archives stay where they are.

    Parameters
    ----------
    old
        The base URL results were published under.
    new
        The base URL that now reaches the result server.
    files
        Published result spec files (JSON or YAML) to rewrite.
    """
    from .errors import SpecError
    from .readdress import readdress as rebase
    from .specs import load_result

    loaded: list[tuple[Path, PublishedResult]] = []
    for path in files:  # every file is read and checked before the first is rewritten
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder, not a spec file: nothing was rewritten")
        if not path.exists():
            raise FileNotFoundError(f"spec file {path} does not exist: nothing was rewritten")
        try:
            loaded.append((path, load_result(path)))
        except OSError as exc:
            raise OSError(f"cannot read {path}: {exc.strerror or exc}; nothing was rewritten") from None
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}; nothing was rewritten") from None
    for path, before in loaded:
        after = rebase(before, old, new)
        if after != before:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(after.to_bacalhau(), indent=2) + "\n")
            tmp.replace(path)
            _console(False).print(f"rewrote {path}")


class _LevelFormatter(logging.Formatter):
    """`warning: <message>`: the CLI's own line format, not Prefect's or logging's."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _warnings_to_stderr() -> None:
    """The package's warnings as `warning: ...` lines on stderr, whether or not Prefect configured logging."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_LevelFormatter())
    package = logging.getLogger("prefect_bacalhau_publish")
    package.addHandler(handler)
    package.propagate = False


def main() -> None:
    """Entry point: run the app; any failure prints one `error:` line and exits 1, a usage error (unknown
    command or option, missing or unconvertible argument) 2, Ctrl-C 130.

    `PBP_DEBUG=1` shows the traceback of a failure that is not one of the package's own errors.
    """
    from cyclopts import CycloptsError

    # Importing what a command needs allocates some hundred thousand objects that live until the process
    # ends; a collection every 700 of them (the default) cost 30 ms of a 0.22 s start (measured, 12 runs).
    # Objects in cycles are still collected, every 50 000 allocations.
    gc.set_threshold(50_000)
    # httpcore imports trio, when installed, only to serve trio event loops, which this CLI never runs: a
    # tenth of a second of every `get` and `publish`.
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    # httpx imports its own command line (click, rich.progress, pygments' lexers where installed) whenever it
    # is imported, to name it `httpx.main` (encode/httpx#3547): 30 ms of every IPFS command. Without it,
    # httpx.main only says how to install it; nothing here calls it.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    _warnings_to_stderr()
    try:
        app(print_error=False, exit_on_error=False)
    except CycloptsError as exc:
        line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        _console(True).print(f"error: {line} (see --help)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _console(True).print("interrupted", markup=False, highlight=False)
        sys.exit(130)
    except Exception as exc:
        line = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        if not isinstance(exc, (BacalhauPublishError, ValueError, OSError)):
            if os.environ.get("PBP_DEBUG"):
                raise
            line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
        _console(True).print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
