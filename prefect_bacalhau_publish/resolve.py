"""A published result from whatever names it, and fetched into a folder: `get_result` without Prefect.

The CLI's `get` of a spec file comes here directly, so Prefect is imported only for an artifact key (to look it
up) and boto3 only for an S3 result.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FetchError
from .parse import load_result
from .sources import fetch_source
from .sources.place import beside, check_dest, place
from .specs import PublishedResult, S3Params

if TYPE_CHECKING:
    from .blocks import IPFSNode, LocalResultServer, S3Target

__all__ = ["fetch_result", "resolve_result"]


def resolve_result(result: PublishedResult | Mapping[str, Any] | str | Path) -> PublishedResult:
    """A published result from a spec object, a JSON/YAML file or text, or a Prefect artifact key."""
    if isinstance(result, PublishedResult):
        return result
    if isinstance(result, Mapping):
        return load_result(result)
    path = Path(result)
    if path.is_file():
        return load_result(path)
    text = str(result)
    if text.lstrip().startswith(("{", "Type", "type")):
        return load_result(text)
    from .artifacts import load_artifact_result

    return load_artifact_result(text)


def fetch_result(
    spec: PublishedResult,
    dest: Path,
    *,
    s3: S3Target | None = None,
    ipfs: IPFSNode | None = None,
    local: LocalResultServer | None = None,
    presigned: bool = False,
) -> Path:
    """Download, verify and extract a published result into `dest` (absent or an empty folder): the body of
    the `get_result` task. With `presigned`, an archived S3 result goes through a presigned URL."""
    if presigned and spec.type == "s3" and isinstance(spec.params, S3Params) and spec.archived:
        from .presign import presign
        from .s3access import s3_access

        signed = presign(spec.params, s3_access(s3))
        spec = PublishedResult.model_validate({"Type": "s3PreSigned", "Params": signed})
    check_dest(dest)  # at once, not after the whole download
    source = spec.to_input_source("/result").source
    with beside(dest, ".pbp-get-") as tmp:
        staging = tmp / "result"
        fetch_source(source, staging, s3=s3, ipfs=ipfs, local=local)
        if not staging.is_dir():
            raise FetchError(f"{spec.type} result did not materialise as a folder")
        place(staging, dest)
    return dest
