"""Presigned download URLs for archived S3 results: the link artifacts made at publish time, and Bacalhau's
`s3PreSigned` form that its requester hands to `get` (fetched without credentials)."""

from __future__ import annotations

from typing import Any

from .s3access import S3Access
from .specs import S3Params, S3PreSignedParams

__all__ = ["presign"]


def presign(result: S3Params, storage: S3Access) -> S3PreSignedParams:
    """Turn an archived S3 result into Bacalhau's `s3PreSigned` form, as its requester does for `get`."""
    client = storage.get_client(result.endpoint, result.region)
    request: dict[str, Any] = {"Bucket": result.bucket, "Key": result.key}
    if result.version_id:
        request["VersionId"] = result.version_id
    url = client.generate_presigned_url(
        "get_object", Params=request, ExpiresIn=int(storage.presign_expiry.total_seconds())
    )
    return S3PreSignedParams.model_validate({**result.to_bacalhau(), "PreSignedURL": url})
