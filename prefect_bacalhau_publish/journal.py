"""A small on-disk journal of S3 uploads that failed and could not be cleaned up at once.

When a multipart upload fails because the store went away, its abort fails too and the parts stay on the
server. The publisher writes the key here and the next publish to the same endpoint and bucket aborts the
incomplete uploads left under it, so no orphaned parts outlive a restart. (A bucket lifecycle rule
`AbortIncompleteMultipartUpload` is the store-side safety net; this works without one.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def journal_path() -> Path:
    """`$PBP_JOURNAL`, else `${XDG_STATE_HOME:-~/.local/state}/prefect-bacalhau-publish/s3-pending.json`."""
    override = os.environ.get("PBP_JOURNAL")
    if override:
        return Path(override)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "prefect-bacalhau-publish" / "s3-pending.json"


@contextlib.contextmanager
def _locked() -> Iterator[list[dict[str, Any]]]:
    path = journal_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []
        except (OSError, ValueError):
            entries = []
        before = list(entries)
        yield entries
        if entries != before:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(entries))
            os.replace(tmp, path)


def remember(endpoint: str | None, bucket: str, key: str) -> None:
    """Note that incomplete uploads may remain under `key` in `bucket` at `endpoint`."""
    entry = {"endpoint": endpoint or "", "bucket": bucket, "key": key}
    with _locked() as entries:
        if entry not in entries:
            entries.append(entry)


def pending(endpoint: str | None, bucket: str) -> list[str]:
    """Keys with possibly orphaned uploads for this endpoint and bucket."""
    with _locked() as entries:
        return [e["key"] for e in entries if e["endpoint"] == (endpoint or "") and e["bucket"] == bucket]


def forget(endpoint: str | None, bucket: str, key: str) -> None:
    """The uploads under `key` were cleaned up."""
    entry = {"endpoint": endpoint or "", "bucket": bucket, "key": key}
    with _locked() as entries:
        while entry in entries:
            entries.remove(entry)
