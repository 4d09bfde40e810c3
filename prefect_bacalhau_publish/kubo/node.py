"""What the IPFS publisher and source need to know about a Kubo node, without importing Prefect.

`IPFSNode` (the Prefect block) has these fields; `KuboNode` is the same settings as a plain dataclass, for
the CLI and library calls made without a block (importing Prefect would add about 3 s to every command).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = ["KuboNode", "NodeSettings", "multiaddr_to_url"]

Profile = Literal["unixfs-v1-2025", "unixfs-v0-2015"]


class NodeSettings(Protocol):
    """A Kubo node's RPC API and import settings: an `IPFSNode` block or a `KuboNode`."""

    @property
    def api_address(self) -> str: ...
    @property
    def auth(self) -> SecretStr | None: ...
    @property
    def pin(self) -> bool: ...
    @property
    def cid_profile(self) -> Profile: ...
    @property
    def preserve_mode(self) -> bool: ...
    @property
    def timeout(self) -> float: ...
    @property
    def api_url(self) -> str: ...


@dataclass(frozen=True)
class KuboNode:
    """An `IPFSNode`'s settings, with its defaults, as a plain object."""

    api_address: str = "/ip4/127.0.0.1/tcp/5001"
    auth: SecretStr | None = None
    pin: bool = True
    cid_profile: Profile = "unixfs-v1-2025"
    preserve_mode: bool = False
    timeout: float = 300.0

    @property
    def api_url(self) -> str:
        """The RPC API as an http(s) base URL."""
        return multiaddr_to_url(self.api_address)


def multiaddr_to_url(address: str) -> str:
    """`/ip4/127.0.0.1/tcp/5001` (or `/dns/host/tcp/N/https`) → `http://127.0.0.1:5001`; URLs pass through."""
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    parts = [p for p in address.split("/") if p]
    if len(parts) < 4 or parts[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or parts[2] != "tcp":
        raise ValueError(f"not an API multiaddr or URL: {address!r}")
    host = f"[{parts[1]}]" if parts[0] == "ip6" else parts[1]
    scheme = "https" if "https" in parts[4:] or "tls" in parts[4:] else "http"
    return f"{scheme}://{host}:{parts[3]}"
