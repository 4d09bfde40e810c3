"""A small on-disk journal of multipart uploads that failed and could not be aborted at once.

When a multipart upload fails because the store went away, its abort fails too and the parts stay on the
server. The publisher writes the upload's id here and the next publish to the same endpoint and bucket
aborts it, so no orphaned parts outlive a restart. (A bucket lifecycle rule `AbortIncompleteMultipartUpload`
is the store-side safety net; this works without one.) Entries older than `MAX_AGE` are dropped with one
log line: by then the store is gone for good or its lifecycle rule has cleaned up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

logger = logging.getLogger("prefect_bacalhau_publish.s3")

MAX_AGE = timedelta(days=7)
"""How long an upload that could not be aborted is retried."""


def journal_path() -> Path:
    """`$PBP_JOURNAL`, else `s3-pending.json` in the Prefect profile's home (`PREFECT_HOME`), so separate
    profiles and test runs never share one."""
    override = os.environ.get("PBP_JOURNAL")
    if override:
        return Path(override)
    return _prefect_home() / "prefect-bacalhau-publish" / "s3-pending.json"


def _prefect_home() -> Path:
    """Prefect's home as Prefect resolves it. Prefect itself (seconds to import) is asked only when it is
    loaded already or a settings file in reach might move the home; else `$PREFECT_HOME` or `~/.prefect`,
    which is what it would answer (the environment outranks every settings file)."""
    home = os.environ.get("PREFECT_HOME")
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or Path(home or "~/.prefect") / "profiles.toml")
    might_move = (
        (Path(".env"), "PREFECT_HOME"),
        (Path("prefect.toml"), "home"),
        (Path("pyproject.toml"), "tool.prefect"),
        (profiles.expanduser(), "PREFECT_HOME"),
    )
    if "prefect.settings" in sys.modules or (home is None and any(map(_mentions, might_move))):
        from prefect.settings import get_current_settings

        return Path(get_current_settings().home)
    return Path(home or "~/.prefect").expanduser()


def _mentions(file_and_word: tuple[Path, str]) -> bool:
    path, word = file_and_word
    try:
        return word.lower() in path.read_text(errors="replace").lower()
    except OSError:
        return False


@contextlib.contextmanager
def _locked() -> Iterator[list[dict[str, Any]]]:
    path = journal_path()
    if not path.exists():
        yield []  # nothing pending: no file, no lock (the common case, every publish)
        return
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


def remember(endpoint: str | None, bucket: str, key: str, upload_id: str) -> None:
    """Note that multipart upload `upload_id` of `key` in `bucket` at `endpoint` still has to be aborted."""
    path = journal_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    entry = {"endpoint": endpoint or "", "bucket": bucket, "key": key, "upload_id": upload_id}
    with _locked() as entries:
        if not any(_same(e, entry) for e in entries):
            entries.append({**entry, "since": time.time()})


def pending(endpoint: str | None, bucket: str) -> list[tuple[str, str]]:
    """`(key, upload_id)` of the uploads still to abort for this endpoint and bucket; entries older than
    MAX_AGE (and entries of older versions, which have no upload id) are dropped."""
    cutoff = time.time() - MAX_AGE.total_seconds()
    with _locked() as entries:
        stale = [e for e in entries if "upload_id" not in e or float(e.get("since", 0)) < cutoff]
        for entry in stale:
            entries.remove(entry)
            logger.info(
                "dropped the journal entry for an unaborted upload of s3://%s/%s at %s: older than %d days",
                entry.get("bucket"),
                entry.get("key"),
                entry.get("endpoint") or "AWS",
                MAX_AGE.days,
            )
        return [
            (e["key"], e["upload_id"])
            for e in entries
            if e["endpoint"] == (endpoint or "") and e["bucket"] == bucket
        ]


def forget(endpoint: str | None, bucket: str, upload_id: str) -> None:
    """The upload was aborted (or is gone)."""
    done = {"endpoint": endpoint or "", "bucket": bucket, "upload_id": upload_id}
    with _locked() as entries:
        entries[:] = [e for e in entries if not _same(e, done)]


def _same(entry: dict[str, Any], other: dict[str, Any]) -> bool:
    return all(entry.get(name) == value for name, value in other.items())
