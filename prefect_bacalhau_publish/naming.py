"""Result names: S3 keys with Bacalhau's placeholders and suffix rules (SPEC §4), and the file names of
archives in the local result server's storage folder (and their `.sha256` sidecars)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .context import ExecutionContext

logger = logging.getLogger("prefect_bacalhau_publish.naming")
_BRACED = re.compile(r"\{[^{}/]*\}")

ARCHIVE_SUFFIX = ".tar.gz"
SIDECAR_SUFFIX = ".sha256"
ARCHIVE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\.tar\.gz")
"""A servable result name: letters, digits, `_`, `.`, `-`; not starting with `.`; at most 207 characters."""
DEFAULT_PORT = 6001
"""The result server's port unless a LocalResultServer block says otherwise."""


def default_storage_dir() -> Path:
    """The storage folder unless a LocalResultServer block says otherwise (the user's data folder)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("prefect-bacalhau-publish")) / "results"


def is_archive_name(name: str) -> bool:
    """True when `name` is a result archive's file name (and holds no `..`)."""
    return ARCHIVE_NAME.fullmatch(name) is not None and ".." not in name


def render_key(pattern: str, *, context: ExecutionContext, archive: bool, warn: bool = True) -> str:
    """Apply Bacalhau's `ParsePublishedKey`: suffix rule first, then the five placeholders.

    An archived result's key gets `.tar.gz` appended unless it already ends so; a plain result's key gets
    a trailing `/`. `{date}` (YYYYMMDD) and `{time}` (HHMMSS) come from `context.published_at` in UTC.
    Any other `{...}` text, including a wrongly-cased placeholder, is left as written (as Bacalhau does),
    with one warning naming it (unless not `warn`), so a typo does not silently overwrite one literal key on
    every run.
    """
    key = pattern
    if archive and not key.endswith(ARCHIVE_SUFFIX):
        key += ARCHIVE_SUFFIX
    elif not archive and not key.endswith("/"):
        key += "/"
    instant = context.published_at
    replacements = {
        "{nodeID}": context.node_id,
        "{executionID}": context.execution_id,
        "{jobID}": context.job_id,
        "{date}": instant.strftime("%Y%m%d"),
        "{time}": instant.strftime("%H%M%S"),
    }
    known = {p.lower(): p for p in replacements}
    for name in sorted(set(_BRACED.findall(pattern)) - set(replacements)) if warn else ():
        hint = f"; did you mean {known[name.lower()]}?" if name.lower() in known else ""
        logger.warning(
            "key %r: %s is not a placeholder and is kept as written (placeholders: %s)%s",
            pattern,
            name,
            ", ".join(replacements),
            hint,
        )
    for placeholder, value in replacements.items():
        key = key.replace(placeholder, value)
    return key
