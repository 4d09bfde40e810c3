"""Prefect Blocks that say how to reach each target: S3, an IPFS node, the local result server."""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
from pydantic import Field, PrivateAttr, SecretStr, field_validator

from .kubo.node import multiaddr_to_url
from .naming import DEFAULT_PORT, default_storage_dir
from .s3access import MAX_CONCURRENCY, MULTIPART_CHUNKSIZE, MULTIPART_THRESHOLD, PRESIGN_EXPIRY, MiB, S3Access

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["IPFSNode", "LocalResultServer", "S3Storage", "S3Target"]

_DOCS = "https://github.com/prefect-bacalhau-publish/prefect-bacalhau-publish/blob/main/README.md"
_BACALHAU_LOGO = (
    "https://raw.githubusercontent.com/bacalhau-project/bacalhau/9c06790d723ed8c76db798139a0c135739ed4e20"
    "/docs/static/img/logo/Bacalhau-icon.svg"
)
_IPFS_LOGO = (
    "https://raw.githubusercontent.com/ipfs/ipfs-docs/5ffa362d0fe7b393e25ea9bf0e73b1cdb752f2a2"
    "/docs/.vuepress/public/images/ipfs-logo-text-black.svg"
)


class S3Storage(Block, S3Access):
    """How to reach S3 or an S3-compatible store (MinIO first) for publishing and fetching results.

    Credentials come from a nested prefect-aws `AwsCredentials` or `MinIOCredentials` block; without one,
    boto3's default chain is used (environment variables, `~/.aws/credentials`, instance role). A spec's
    `Endpoint` / `Region` params override this block's.

    Example:
        Load a saved block and build an S3 client:
        ```python
        from prefect_bacalhau_publish import S3Storage

        s3 = S3Storage.load("BLOCK_NAME")
        client = s3.get_client()
        ```
    """

    _block_type_name = "Bacalhau S3 Storage"
    _logo_url = _BACALHAU_LOGO  # type: ignore[assignment]
    _documentation_url = f"{_DOCS}#s3"  # type: ignore[assignment]
    _description = "S3 or S3-compatible storage (MinIO) for Bacalhau-style result publishing."

    credentials: AwsCredentials | MinIOCredentials | None = Field(
        default=None,
        description="A prefect-aws credentials block; empty uses the AWS default credential chain.",
    )
    endpoint_url: str | None = Field(
        default=None,
        title="Endpoint URL",
        description="S3 endpoint URL, e.g. http://127.0.0.1:9000 for MinIO; empty means AWS.",
    )
    region_name: str | None = Field(default=None, description="Region of the buckets, e.g. us-east-1.")
    presign_expiry: timedelta = Field(
        default=PRESIGN_EXPIRY, description="How long presigned download URLs stay valid."
    )
    multipart_threshold: int = Field(
        default=MULTIPART_THRESHOLD,
        ge=5 * MiB,
        description="Objects larger than this many bytes upload in parts.",
    )
    multipart_chunksize: int = Field(
        default=MULTIPART_CHUNKSIZE,
        ge=5 * MiB,
        description="Size in bytes of each part of a multipart upload; an archive can hold up to 10 000 parts.",
    )
    max_concurrency: int = Field(
        default=MAX_CONCURRENCY,
        ge=1,
        le=64,
        description="Parallel transfers (parts, or files of a plain result).",
    )

    _clients: dict[tuple[Any, ...], tuple[Any, S3Client]] = PrivateAttr(default_factory=dict)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_has_scheme(cls, value: str | None) -> str | None:
        from .s3access import check_endpoint

        value = value or None
        check_endpoint(value)
        return value

    @field_validator("credentials", mode="before")
    @classmethod
    def _credentials_block_type(cls, value: Any) -> Any:
        """A saved nested block loads as a plain dict: pick its type by its fields, not union order."""
        if isinstance(value, dict) and "block_type_slug" not in value:
            slug = "minio-credentials" if "minio_root_user" in value else "aws-credentials"
            return {**value, "block_type_slug": slug}
        return value

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle without the cached clients (for Dask and process pools)."""
        state: dict[Any, Any] = super().__getstate__()
        state["__pydantic_private__"] = {"_clients": {}}
        return state

    @classmethod
    def coerce(cls, value: S3Storage | S3Bucket | AwsCredentials | MinIOCredentials | None) -> S3Storage:
        """An `S3Storage` from any block a prefect-aws user already has: an `S3Bucket` (its credentials and
        their endpoint), bare `AwsCredentials` / `MinIOCredentials`, or None (the AWS default chain)."""
        if value is None:
            return cls()
        if isinstance(value, S3Storage):
            return value
        if isinstance(value, S3Bucket):
            value = value.credentials
        if isinstance(value, (AwsCredentials, MinIOCredentials)):
            return cls(credentials=value, region_name=getattr(value, "region_name", None))
        raise TypeError(
            f"expected an S3Storage, S3Bucket, AwsCredentials or MinIOCredentials block, got {type(value).__name__}"
        )


S3Target = S3Storage | S3Bucket | AwsCredentials | MinIOCredentials
"""What every `s3=` parameter takes: an `S3Storage`, or a prefect-aws block it is made from (`coerce`)."""


class IPFSNode(Block):
    """How to reach a Kubo node's RPC API, and how results are imported (CID profile, modes kept or not).

    Example:
        Load a saved block:
        ```python
        from prefect_bacalhau_publish import IPFSNode

        node = IPFSNode.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Bacalhau IPFS Node"
    _logo_url = _IPFS_LOGO  # type: ignore[assignment]
    _documentation_url = f"{_DOCS}#ipfs"  # type: ignore[assignment]
    _description = "A Kubo (IPFS) node's RPC API for Bacalhau-style IPFS publishing."

    api_address: str = Field(
        default="/ip4/127.0.0.1/tcp/5001",
        title="RPC API address",
        description="The node's RPC API as a multiaddr or an http(s):// URL.",
    )
    auth: SecretStr | None = Field(
        default=None,
        description="Authorization header value for the RPC API, e.g. 'Bearer TOKEN' or 'Basic ...'.",
    )
    gateway_url: str | None = Field(
        default=None,
        title="Gateway URL",
        description="HTTP gateway base URL used for links to published results.",
    )
    pin: bool = Field(default=True, description="Pin published results on the node.")
    cid_profile: Literal["unixfs-v1-2025", "unixfs-v0-2015"] = Field(
        default="unixfs-v1-2025",
        title="CID profile",
        description="Kubo import profile: unixfs-v1-2025 (CIDv1, raw leaves, 1 MiB chunks) or unixfs-v0-2015.",
    )
    preserve_mode: bool = Field(
        default=False,
        title="Preserve modes",
        description=(
            "Store each file's and folder's permission bits in the DAG (Kubo 0.30+ `add --preserve-mode`); "
            "they are restored on fetch. Changes the CIDs and turns raw leaves off: leave it off for the "
            "CIDs `ipfs add` and Bacalhau give."
        ),
    )
    timeout: float = Field(default=300.0, gt=0, description="Seconds to wait for one RPC call.")

    @property
    def api_url(self) -> str:
        """The RPC API as an http(s) base URL."""
        return multiaddr_to_url(self.api_address)

    def get_client(self) -> Any:
        """An `ipfshttpclient.Client` for your own calls (extra `ipfshttpclient`), without its version gate.

        `ipfshttpclient.connect()` refuses every Kubo newer than 0.8; the client itself works with today's
        Kubo for ordinary calls. The publisher does not use it (it talks to the RPC API directly).
        """
        try:
            import ipfshttpclient
        except ImportError as exc:
            raise ImportError(
                "IPFSNode.get_client() needs the optional extra: pip install 'prefect-bacalhau-publish[ipfshttpclient]'"
            ) from exc
        headers = {"Authorization": self.auth.get_secret_value()} if self.auth is not None else {}
        return ipfshttpclient.Client(_to_multiaddr(self.api_address), headers=headers, timeout=self.timeout)


def _to_multiaddr(address: str) -> str:
    """A URL API address as the multiaddr ipfshttpclient expects; multiaddrs pass through."""
    if not address.startswith(("http://", "https://")):
        return address
    parsed = urlparse(address)
    host = parsed.hostname or "127.0.0.1"
    proto = "ip6" if ":" in host else ("ip4" if host.replace(".", "").isdigit() else "dns")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"/{proto}/{host}/tcp/{port}/{parsed.scheme}"


_ADDRESS_TYPES = ("private", "public", "loopback", "localhost", "local", "linklocal", "multicast", "any")


class LocalResultServer(Block):
    """Where the local publisher stores archives and how the result server is reached.

    Example:
        Load a saved block:
        ```python
        from prefect_bacalhau_publish import LocalResultServer

        server = LocalResultServer.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Bacalhau Local Result Server"
    _logo_url = _BACALHAU_LOGO  # type: ignore[assignment]
    _documentation_url = f"{_DOCS}#local"  # type: ignore[assignment]
    _description = "The local publisher's storage folder and the HTTP server that serves it."

    storage_dir: Path = Field(
        default_factory=default_storage_dir,
        description="Folder the archives are written to and served from.",
    )
    host: str = Field(default="0.0.0.0", description="Interface the result server listens on.")
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description="Port the result server listens on.")
    public_address: str | None = Field(
        default=None,
        description="Host/IP in result URLs, or an address type (private, public, loopback, ...); empty is 127.0.0.1.",
    )
    max_age: timedelta | None = Field(default=None, description="Delete results older than this.")
    max_total_bytes: int | None = Field(
        default=None, ge=0, description="Delete the oldest results while the folder holds more than this."
    )
    prune_interval: float = Field(
        default=60.0, gt=0, description="Seconds between retention passes of a running result server."
    )

    @field_validator("max_age")
    @classmethod
    def _non_negative_age(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    def resolved_address(self) -> str:
        """The host that goes into result URLs: a given name/IP, or the first IPv4 of an address type."""
        value = (self.public_address or "127.0.0.1").strip()
        kind = value.lower()
        if kind not in _ADDRESS_TYPES:
            return value
        if kind in ("loopback", "localhost", "local"):
            return "127.0.0.1"
        return _first_ipv4(kind) or "127.0.0.1"

    def base_url(self) -> str:
        """`http://<address>:<port>`, the prefix of every result URL."""
        return f"http://{self.resolved_address()}:{self.port}"


def _first_ipv4(kind: str) -> str | None:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        address = ipaddress.IPv4Address(info[4][0])
        matches = {
            "private": address.is_private and not address.is_loopback and not address.is_link_local,
            "public": address.is_global,
            "linklocal": address.is_link_local,
            "multicast": address.is_multicast,
            "any": not address.is_loopback,
        }
        if matches.get(kind):
            return str(address)
    return None
