"""Turn boto3/botocore failures into one-line messages that say what failed and what to do."""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "403",
}
_MISSING = {"NoSuchKey", "NotFound", "404", "NoSuchVersion"}
_TRANSIENT = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "XMinioServerNotInitialized",
    "500",
    "502",
    "503",
    "504",
}


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError (`NoSuchBucket`, `403`, ...), else ''."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying (throttling, 5xx, dropped connections); never for 403/404."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return True
    return error_code(cause) in _TRANSIENT


def explain(
    exc: BaseException, *, action: str, bucket: str, key: str | None = None, endpoint: str | None
) -> str:
    """`<action> s3://bucket/key failed: <reason>. <what to do>`; never includes credentials."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    at = f" at {endpoint}" if endpoint else ""
    code = error_code(exc)
    if isinstance(exc, NoCredentialsError):
        hint = (
            "no S3 credentials found: set a credentials block on S3Storage or the AWS_* environment variables"
        )
    elif isinstance(exc, EndpointConnectionError):
        hint = f"cannot reach the S3 endpoint{at}: check Endpoint and that the server is running"
    elif code == "NoSuchBucket":
        hint = f"bucket {bucket!r} does not exist{at}: create it or fix Bucket"
    elif code in _DENIED:
        hint = f"access denied ({code}){at}: check the credentials and that they may use bucket {bucket!r}"
    elif code in _MISSING:
        hint = f"no such object ({code}){at}: check Key and VersionID"
    elif code in ("PreconditionFailed", "412"):
        hint = "the object changed while it was read (ETag no longer matches): fetch again"
    elif code:
        message = exc.response.get("Error", {}).get("Message", "") if isinstance(exc, ClientError) else ""
        hint = f"{code}: {message}".rstrip(": ")
    elif isinstance(exc, BotoCoreError):
        hint = f"{type(exc).__name__}: {exc}"
    else:
        hint = f"{type(exc).__name__}: {exc}"
    return f"{action} {where} failed: {hint}"
