"""Layout of the local publisher's storage folder, and retention (pruning) of the results in it.

The folder holds, at its top level only, `<executionID>.tar.gz` archives and their `<name>.sha256`
sidecars (`sha256sum` format). Files being written have temporary names starting with `.`, which never
match `ARCHIVE_NAME`, so neither the server nor `prune` ever touches a half-written result.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Container
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .naming import ARCHIVE_NAME, ARCHIVE_SUFFIX, SIDECAR_SUFFIX, is_archive_name

__all__ = ["ARCHIVE_NAME", "ARCHIVE_SUFFIX", "SIDECAR_SUFFIX", "is_archive_name", "prune"]

logger = logging.getLogger("prefect_bacalhau_publish.retention")


@dataclass(frozen=True)
class _Result:
    name: str
    mtime: float
    size: int  # archive + sidecar bytes


def _results(storage_dir: Path) -> tuple[list[_Result], list[str]]:
    """The regular archive files at the top of `storage_dir`, and sidecars whose archive is gone."""
    results: list[_Result] = []
    sidecars: dict[str, int] = {}
    with os.scandir(storage_dir) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            if is_archive_name(entry.name):
                results.append(_Result(entry.name, info.st_mtime, info.st_size))
            elif entry.name.endswith(SIDECAR_SUFFIX) and is_archive_name(entry.name[: -len(SIDECAR_SUFFIX)]):
                sidecars[entry.name[: -len(SIDECAR_SUFFIX)]] = info.st_size
    with_sizes = [_Result(r.name, r.mtime, r.size + sidecars.pop(r.name, 0)) for r in results]
    return with_sizes, [name + SIDECAR_SUFFIX for name in sidecars]


def _remove(storage_dir: Path, name: str) -> None:
    for victim in (name, name + SIDECAR_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(storage_dir / victim)


def prune(
    storage_dir: Path,
    *,
    max_age: timedelta | None,
    max_total_bytes: int | None,
    now: datetime | None = None,
    in_use: Container[str] = (),
) -> list[Path]:
    """Delete results older than `max_age`, then the oldest while the folder holds over `max_total_bytes`.

    Only top-level regular files named like `ARCHIVE_NAME` are candidates (temp files and symlinks are
    never touched); sizes count archives and sidecars; a result's sidecar goes with it, and orphaned
    sidecars are removed. Names in `in_use` (downloads in progress) are kept and still count towards the
    total. Returns the archives deleted, oldest first. A missing `storage_dir` holds nothing to prune.
    """
    if max_age is None and max_total_bytes is None:
        return []
    try:
        results, orphans = _results(storage_dir)
    except FileNotFoundError:
        return []
    for orphan in orphans:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(storage_dir / orphan)
    results.sort(key=lambda r: (r.mtime, r.name))
    now_ts = (now or datetime.now(UTC)).timestamp()
    doomed: list[_Result] = []
    kept: list[_Result] = []
    for result in results:
        too_old = max_age is not None and now_ts - result.mtime > max_age.total_seconds()
        (doomed if too_old and result.name not in in_use else kept).append(result)
    if max_total_bytes is not None:
        total = sum(r.size for r in kept)
        for result in list(kept):
            if total <= max_total_bytes:
                break
            if result.name in in_use:
                continue
            kept.remove(result)
            doomed.append(result)
            total -= result.size
    deleted: list[Path] = []
    for result in doomed:
        _remove(storage_dir, result.name)
        deleted.append(storage_dir / result.name)
        logger.info("retention deleted %s (%d bytes)", result.name, result.size)
    return deleted
