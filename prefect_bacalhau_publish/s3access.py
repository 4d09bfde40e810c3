"""S3 clients and obstore stores from S3 settings, without Prefect: what the `S3Storage` block and
`DefaultS3` (an `s3=None`, no block at all) share.

Nothing here imports Prefect, obstore only once a store is built, and boto3 only once a client is built or
a store needs boto3's credential chain (not when the keys are in the environment: `environment_keys`), so
publishing or fetching with the default chain (the CLI without `--s3-block`) never pays for Prefect.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from prefect_aws import AwsCredentials, MinIOCredentials

    from .blocks import S3Target

__all__ = ["DefaultS3", "S3Access", "check_endpoint", "s3_access"]

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 8 * MiB
MULTIPART_CHUNKSIZE = 16 * MiB
MAX_CONCURRENCY = 8
PRESIGN_EXPIRY = timedelta(hours=1)
_CLIENT_LOCK = threading.Lock()
QUICK_READ_TIMEOUT = 10
"""Seconds a clean-up call (`get_client(quick=True)`) waits for an answer, per try."""


class S3Access:
    """Builds boto3 clients and obstore stores from the settings a subclass holds (`S3Storage`, `DefaultS3`)."""

    if TYPE_CHECKING:
        credentials: AwsCredentials | MinIOCredentials | None
        endpoint_url: str | None
        region_name: str | None
        presign_expiry: timedelta
        multipart_threshold: int
        multipart_chunksize: int
        max_concurrency: int
        _clients: dict[tuple[Any, ...], tuple[Any, S3Client]]

    def get_client(
        self, endpoint: str | None = None, region: str | None = None, *, quick: bool = False
    ) -> S3Client:
        """A boto3 S3 client from the nested credentials; `endpoint`/`region` override the block's.

        `quick`: a client for clean-up calls (aborting a multipart upload) that gives up after
        `QUICK_READ_TIMEOUT` seconds and one retry, instead of botocore's 60 s and three retries, so a store
        that holds the call (MinIO without its write quorum) does not hold the caller's error for minutes.
        Clients are thread-safe and costly to build, so one per setting is kept on this block.
        """
        key = (
            endpoint or self.endpoint_url,
            region or self.region_name,
            id(self.credentials),
            self.max_concurrency,
            quick,
        )
        with _CLIENT_LOCK:
            cached = self._clients.get(key)
            if cached is None or cached[0] is not self.credentials:
                cached = self._clients[key] = (self.credentials, self._new_client(endpoint, region, quick))
            return cached[1]

    def _session(self) -> Any:
        import boto3

        return self.credentials.get_boto3_session() if self.credentials is not None else boto3.Session()

    def _client_parameters(self) -> dict[str, Any]:
        """The credentials block's `aws_client_parameters` as boto3 client arguments (verify, use_ssl, ...)."""
        if self.credentials is None:
            return {}
        params: dict[str, Any] = self.credentials.aws_client_parameters.get_params_override()
        return params

    def tls_verify(self) -> bool | str:
        """How https endpoints are verified: True (system CAs), False, or a CA bundle's path."""
        verify = self._client_parameters().get("verify", True)
        return verify if isinstance(verify, bool) else str(verify)

    def resolve(self, endpoint: str | None = None, region: str | None = None) -> tuple[str | None, str]:
        """The endpoint URL (None: AWS) and region used for a spec's `Endpoint`/`Region` overrides."""
        endpoint = endpoint or self.endpoint_url or self._client_parameters().get("endpoint_url")
        check_endpoint(endpoint)
        credentials_region = getattr(self.credentials, "region_name", None)
        # boto3 reads AWS_DEFAULT_REGION before its config files: taken here, no boto3 session is needed.
        region = (
            region
            or self.region_name
            or credentials_region
            or os.environ.get("AWS_DEFAULT_REGION")
            or self._session().region_name
        )
        return endpoint, region or "us-east-1"

    def _new_client(self, endpoint: str | None, region: str | None, quick: bool = False) -> S3Client:
        from botocore.config import Config

        params = self._client_parameters()
        params.pop("endpoint_url", None)
        user_config = params.pop("config", None)
        endpoint, region = self.resolve(endpoint, region)
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=max(10, self.max_concurrency * 2),
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if endpoint else None,
        )
        if user_config is not None:
            config = config.merge(user_config)
        if quick:
            config = config.merge(
                Config(
                    connect_timeout=min(getattr(config, "connect_timeout", 60), QUICK_READ_TIMEOUT),
                    read_timeout=min(getattr(config, "read_timeout", 60), QUICK_READ_TIMEOUT),
                    retries={"total_max_attempts": 2, "mode": "standard"},
                )
            )
        client: S3Client = self._session().client(
            "s3", endpoint_url=endpoint, region_name=region, config=config, **params
        )
        for operation in ("PutObject", "UploadPart"):
            client.meta.events.register(f"before-sign.s3.{operation}", _payload_hash_from_checksum)
        return client

    def get_store(self, bucket: str, endpoint: str | None = None, region: str | None = None) -> Any:
        """An obstore `S3Store` for `bucket` with the same credentials, endpoint, region and TLS settings as
        `get_client`; it asks S3 to verify a SHA-256 checksum of every object and part it uploads."""
        from obstore.store import S3Store

        endpoint, region = self.resolve(endpoint, region)
        options: Any = {"connect_timeout": "10s", "timeout": "300s"}  # obstore's ClientConfig
        if endpoint is not None and endpoint.startswith("http://"):
            options["allow_http"] = True
        verify = self.tls_verify()
        if verify is False:
            options["allow_invalid_certificates"] = True
        elif isinstance(verify, str):
            options["root_certificate"] = Path(verify).read_bytes()
        config: Any = {"region": region, "checksum_algorithm": "SHA256"}  # obstore's S3Config
        if endpoint is not None:
            config.update(endpoint=endpoint, virtual_hosted_style_request=False)
        store = partial(
            S3Store,
            bucket,
            client_options=options,
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=60)},
        )
        keys = environment_keys() if self.credentials is None else None
        if keys is not None:
            config.update(keys)
            return store(config=config)
        from obstore.auth.boto3 import Boto3CredentialProvider

        session = self._session()
        if session.get_credentials() is None:
            # boto3's chain found nothing: say so as boto3 does, rather than let obstore's own chain try
            # the instance metadata service.
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError()
        return store(config=config, credential_provider=Boto3CredentialProvider(session))


def environment_keys() -> dict[str, str] | None:
    """The keys boto3's default chain takes first, from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and a
    token (`AWS_SECURITY_TOKEN`, then `AWS_SESSION_TOKEN`, as botocore's `EnvProvider` reads them), as
    obstore config; None when the chain must run: no keys there, or keys that expire
    (`AWS_CREDENTIAL_EXPIRATION`, which boto3 refreshes). With them a store needs no boto3 session, and a
    CLI get or publish no boto3 import (0.25 s of its start-up)."""
    key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if not key or not secret or os.environ.get("AWS_CREDENTIAL_EXPIRATION"):
        return None
    keys = {"access_key_id": key, "secret_access_key": secret}
    for name in ("AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        if name in os.environ:
            keys["session_token"] = os.environ[name]
            break
    return keys


@dataclass(frozen=True)
class DefaultS3(S3Access):
    """What `s3=None` means: boto3's default credential chain with `S3Storage`'s defaults (no Prefect)."""

    credentials: None = None
    endpoint_url: str | None = None
    region_name: str | None = None
    presign_expiry: timedelta = PRESIGN_EXPIRY
    multipart_threshold: int = MULTIPART_THRESHOLD
    multipart_chunksize: int = MULTIPART_CHUNKSIZE
    max_concurrency: int = MAX_CONCURRENCY
    _clients: dict[tuple[Any, ...], tuple[Any, S3Client]] = field(
        default_factory=dict, repr=False, compare=False
    )


def check_endpoint(endpoint: str | None) -> None:
    """Refuse an endpoint without its scheme (`127.0.0.1:9000`), which botocore only calls "Invalid
    endpoint", with the fix named."""
    if endpoint is not None and not endpoint.lower().startswith(("http://", "https://")):
        from .errors import SpecError

        raise SpecError(
            f"S3 endpoint {endpoint!r} has no scheme: write http://{endpoint} (or https://{endpoint} for TLS)"
        )


_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")


def check_bucket(bucket: str) -> None:
    """Refuse, before any request, a bucket name no S3 store takes: 3 to 63 characters (255 for AWS's
    legacy us-east-1 names), letters, digits, `.`, `-` (and `_` for those legacy names), starting and
    ending with a letter or digit, no `..`."""
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or (len(bucket) > 63 and bucket.lower() == bucket):
        from .errors import SpecError

        raise SpecError(
            f"bucket name {bucket!r} is not one S3 accepts: 3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit; fix Bucket"
        )


def check_key(key: str, what: str = "Key") -> None:
    """Refuse, before any request, a key S3 stores but nothing can fetch back as a path: empty, over 1024
    UTF-8 bytes, or with a `.` or `..` segment (a placeholder value such as a job ID of `../x`)."""
    from .errors import SpecError

    size = len(key.encode("utf-8", "surrogatepass"))
    bad = [part for part in key.split("/") if part in (".", "..")]
    if not key or size > 1024 or bad:
        why = (
            "it is empty"
            if not key
            else f"it is {size} bytes, over 1024"
            if size > 1024
            else (f"it has a {bad[0]!r} segment")
        )
        shown = repr(key) if len(key) <= 80 else repr(key[:60]) + "…"
        raise SpecError(f"S3 key {shown} is not usable: {why}; fix {what} (and the placeholder values in it)")


def s3_access(target: S3Target | S3Access | None) -> S3Access:
    """How to reach S3 from any `s3=` argument: `DefaultS3()` for None (Prefect stays unimported), else the
    block as `S3Storage.coerce` makes it."""
    if target is None:
        return DefaultS3()
    if isinstance(target, S3Access):
        return target
    from .blocks import S3Storage

    return S3Storage.coerce(target)


def _payload_hash_from_checksum(request: Any, **_: Any) -> None:
    """Sign a PUT with the SHA-256 it already carries as `x-amz-checksum-sha256` instead of hashing the
    body once more (botocore hashes every body sent over plain http): the same digest, one pass."""
    checksum = request.headers.get("x-amz-checksum-sha256")
    if checksum and "X-Amz-Content-SHA256" not in request.headers:
        request.headers["X-Amz-Content-SHA256"] = base64.b64decode(checksum).hex()
