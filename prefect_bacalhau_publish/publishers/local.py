"""The local publisher: the result archive goes into the result server's storage folder, as Bacalhau's does.

`<executionID>.tar.gz` is written under a temporary dot-name in the same folder, fsynced and renamed into
place, so readers (the server, `prune`) never see a half-written archive. Its SHA-256 is computed while
writing and kept in a `<executionID>.tar.gz.sha256` sidecar (`sha256sum` format), which the server sends as
`ETag` / `Repr-Digest` so downloads are verified while the published result keeps Bacalhau's shape
(`{"Type": "urlDownload", "Params": {"URL": ...}}`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..archive import ArchiveInfo, write_archive
from ..errors import LocalPublishError, PublishError
from ..naming import ARCHIVE_SUFFIX, DEFAULT_PORT, SIDECAR_SUFFIX, default_storage_dir, is_archive_name
from ..specs import ExecutionContext, PublishedResult, PublisherSpec

if TYPE_CHECKING:
    from ..blocks import LocalResultServer
    from .fanout import ArchiveWriter

__all__ = ["archive_name", "publish"]

logger = logging.getLogger("prefect_bacalhau_publish.local")


def archive_name(execution_id: str) -> str:
    """`<execution_id>.tar.gz`; raises LocalPublishError for an id that is not a safe, servable file name."""
    bad = ("/", "\\", "..", "\x00")
    if not execution_id or execution_id.startswith(".") or any(b in execution_id for b in bad):
        raise LocalPublishError(
            f"execution id {execution_id!r} cannot be a file name: it must be non-empty, not start with '.', "
            "and hold no '/', '\\', '..' or NUL"
        )
    name = execution_id + ARCHIVE_SUFFIX
    if not is_archive_name(name):
        raise LocalPublishError(
            f"execution id {execution_id!r} is not servable: use up to 200 letters, digits, '_', '.' and '-'"
        )
    return name


def publish(
    result_dir: Path,
    spec: PublisherSpec,
    context: ExecutionContext,
    target: LocalResultServer | None,
    *,
    archive: ArchiveWriter | None = None,
) -> PublishedResult:
    """Write `result_dir`'s archive into the storage folder and return its `urlDownload` result.

    `archive` writes it instead of `write_archive` (`fanout`: one archive, several targets)."""
    if spec.type != "local":
        raise LocalPublishError(f"invalid publisher type. expected local, but received: {spec.type}")
    name = archive_name(context.execution_id)
    if target is not None:
        storage, base_url = Path(target.storage_dir).expanduser(), target.base_url()
    else:  # a default LocalResultServer's, without importing Prefect for its Block class
        storage, base_url = default_storage_dir(), f"http://127.0.0.1:{DEFAULT_PORT}"
    started = time.perf_counter()
    try:
        if not storage.is_dir():
            storage.mkdir(mode=0o700, parents=True, exist_ok=True)
            storage.chmod(0o700)  # whatever the umask, as Bacalhau creates it
    except OSError as exc:
        raise LocalPublishError(f"cannot create the storage folder {storage}: {exc.strerror}") from None
    info = _write(result_dir, storage, name, archive)
    url = f"{base_url}/{name}"
    logger.info(
        "published %s (%d bytes, sha256 %s) in %.2fs",
        url,
        info.size,
        info.sha256,
        time.perf_counter() - started,
    )
    return PublishedResult.model_validate({"Type": "urlDownload", "Params": {"URL": url}})


def _explain(exc: OSError, storage: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {storage}: free space, or set max_age / max_total_bytes"
    if exc.errno == errno.EFBIG:
        return "the archive exceeds the file size limit of this process or filesystem"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{storage} is not writable: {exc.strerror}"
    return exc.strerror or str(exc)


def _write(result_dir: Path, storage: Path, name: str, archive: ArchiveWriter | None = None) -> ArchiveInfo:
    """Write archive then sidecar under temp names, fsync, rename both into place; clean up on failure."""
    write = archive if archive is not None else partial(write_archive, result_dir)
    temps: list[str] = []
    try:
        fd, archive_tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=storage)
        temps.append(archive_tmp)
        with open(fd, "wb", buffering=0) as out:
            info = write(out)
            os.fsync(out.fileno())
        fd, sidecar_tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".sha256.tmp", dir=storage)
        temps.append(sidecar_tmp)
        with open(fd, "wb") as out:
            out.write(f"{info.sha256}  {name}\n".encode())
            out.flush()
            os.fsync(out.fileno())
        final = storage / name
        # Drop an old sidecar first, so a re-published archive is never paired with a stale digest.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(final) + SIDECAR_SUFFIX)
        os.replace(archive_tmp, final)
        temps.remove(archive_tmp)
        os.replace(sidecar_tmp, str(final) + SIDECAR_SUFFIX)
        temps.remove(sidecar_tmp)
        _fsync_dir(storage)
        return info
    except LocalPublishError:
        raise
    except PublishError as exc:
        raise LocalPublishError(f"local publish of {result_dir} failed: {exc}") from None
    except OSError as exc:
        raise LocalPublishError(
            f"local publish of {result_dir} into {storage} failed: {_explain(exc, storage)}"
        ) from None
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
