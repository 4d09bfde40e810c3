"""S3 key naming: Bacalhau's placeholders and suffix rules (SPEC §4)."""

from __future__ import annotations

from .specs import ExecutionContext

ARCHIVE_SUFFIX = ".tar.gz"


def render_key(pattern: str, *, context: ExecutionContext, archive: bool) -> str:
    """Apply Bacalhau's `ParsePublishedKey`: suffix rule first, then the five placeholders.

    An archived result's key gets `.tar.gz` appended unless it already ends so; a plain result's key gets
    a trailing `/`. `{date}` (YYYYMMDD) and `{time}` (HHMMSS) come from `context.published_at` in UTC.
    Any other `{...}` text, including a wrongly-cased placeholder, is left as written.
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
    for placeholder, value in replacements.items():
        key = key.replace(placeholder, value)
    return key
