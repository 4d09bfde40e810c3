"""Turn boto3/botocore and obstore failures into one-line messages that say what failed and what to do."""

from __future__ import annotations

import logging
import re
import sys
from typing import TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    SSLError,
)

logger = logging.getLogger("prefect_bacalhau_publish.s3")
E = TypeVar("E", bound=Exception)

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


class StoreNotFound(Exception):
    """obstore's 404 for a request (it raises the builtin FileNotFoundError, which a local file also may)."""


def is_client_error(exc: BaseException) -> bool:
    """True for a failed request of either S3 client (botocore, boto3's transfer manager, obstore): what the
    publisher explains in one line. obstore is recognised by its module, so that importing this module
    does not load it (archive publishes never need it; it costs ~12 MiB of memory)."""
    return isinstance(exc, (ClientError, BotoCoreError)) or _upload_failed(exc) or is_obstore(exc)


def _upload_failed(exc: BaseException) -> bool:
    """True for boto3's transfer manager's `S3UploadFailedError`. Looked up among loaded modules: if
    boto3 was never imported, no such error exists, and a get need not pay boto3's 0.25 s import."""
    module = sys.modules.get("boto3.exceptions")
    return module is not None and isinstance(exc, module.S3UploadFailedError)


_CODE = re.compile(r"<Code>([A-Za-z0-9.]+)</Code>")
_BOTO3_CODE = re.compile(r"An error occurred \(([A-Za-z0-9.]+)\)")


def is_obstore(exc: BaseException) -> bool:
    """True for obstore's errors, recognised by module (this module never imports obstore)."""
    return isinstance(exc, StoreNotFound) or type(exc).__module__.startswith("obstore")


def error_code(exc: BaseException) -> str:
    """The S3 error code of a failed request (`NoSuchBucket`, `403`, ...), else ''."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    if is_obstore(exc):
        found = _CODE.search(str(exc))
        return found.group(1) if found else ""
    if _upload_failed(exc):  # boto3's transfer manager keeps only the message
        found = _BOTO3_CODE.search(str(exc))
        return found.group(1) if found else ""
    return ""


def is_denied(exc: BaseException) -> bool:
    """True for a 403: the credentials are wrong, or lack the permission the request needs."""
    return error_code(exc) in _DENIED


def _plain_http(exc: BaseException) -> bool:
    """https:// sent to an endpoint that answers in plain http (OpenSSL: WRONG_VERSION_NUMBER; rustls:
    a corrupt message / InvalidContentType)."""
    text = str(exc)
    return (isinstance(exc, SSLError) or is_obstore(exc)) and any(
        sign in text for sign in ("WRONG_VERSION_NUMBER", "wrong version number", "InvalidContentType")
    )


def _untrusted_certificate(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, SSLError) or (
        is_obstore(exc) and ("InvalidCertificate" in text or "UnknownIssuer" in text)
    )


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, EndpointConnectionError):
        return True
    text = str(exc)
    return (
        is_obstore(exc)
        and not error_code(exc)
        and ("kind: Connect" in text or "error sending request" in text)
    )


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying (throttling, 5xx, dropped connections); never for 403/404."""
    marked = getattr(exc, "transient", None)
    if marked is not None:
        return bool(marked)
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError)):
        return True
    return _unreachable(cause) or error_code(cause) in _TRANSIENT


def wrapped(
    error: type[E], exc: BaseException, *, action: str, bucket: str, key: str | None, endpoint: str | None
) -> E:
    """`error(explain(...))` for a client failure, to be raised `from None`: one line in a run's log, with
    the library's traceback at debug level and whether a retry may help kept on the error."""
    logger.debug("%s s3://%s/%s failed", action, bucket, key or "", exc_info=exc)
    made = error(explain(exc, action=action, bucket=bucket, key=key, endpoint=endpoint))
    made.transient = is_transient(exc)  # type: ignore[attr-defined]
    return made


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
    elif _plain_http(exc):
        plain = f" ({endpoint.replace('https://', 'http://', 1)})" if endpoint else ""
        hint = f"the S3 endpoint{at} speaks plain http, not TLS: write its Endpoint with http://{plain}"
    elif _untrusted_certificate(exc):
        hint = (
            f"the TLS certificate of the S3 endpoint{at} is not trusted: give the CA bundle as "
            "verify_cert_path in the credentials block's aws_client_parameters"
        )
    elif _unreachable(exc):
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
    elif is_obstore(exc):
        hint = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    elif isinstance(exc, BotoCoreError):
        hint = f"{type(exc).__name__}: {exc}"
    else:
        hint = f"{type(exc).__name__}: {exc}"
    return f"{action} {where} failed: {hint}"
