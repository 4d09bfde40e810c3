"""Kubo's own HTTP gateway, used for one thing: a trustless CAR of a DAG (`?format=car`), depth-first with
repeats (`order=dfs; dups=y`), so it can be checked and written as it streams (`OrderedCar`).

Why not the RPC API's `dag/export`: on Kubo 0.42 here, 1 GiB streams from the RPC in 12.1–13.7 s and from
the gateway in 3.7–4.4 s (curl, both to /dev/null); `ipfs get` itself takes 7.1–7.7 s. The gateway is found
from the node's own config (`Addresses.Gateway`), so it serves the same blockstore; a gateway bound to all
interfaces is reached at the RPC API's host, and one bound to loopback only when the RPC API is on
loopback too. Any failure before the first byte means "no gateway": the caller falls back to the RPC API.

The client is urllib3 (already installed with botocore): reading that 1 GiB CAR costs 1.0 s of CPU with
urllib3, 1.25 s with aiohttp and 2.7 s with httpx (~4 KiB chunks, one h11 event each), on a 2-core machine
where the gateway itself needs one core.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
from collections.abc import Iterator
from typing import BinaryIO, cast
from urllib.parse import urlsplit

import urllib3

from ..errors import FetchError
from .node import multiaddr_to_url
from .rpc import KuboClient

__all__ = ["CAR_TYPE", "find_gateway", "open_car"]

CAR_TYPE = "application/vnd.ipld.car; version=1; order=dfs; dups=y"
_READ_BUFFER = 1 << 20
logger = logging.getLogger(__name__)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an IP address, or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _loopback(host: str) -> bool:
    ip = _ip(host)
    return host == "localhost" or (ip is not None and ip.is_loopback)


def gateway_url(address: str, api_url: str) -> str | None:
    """The URL at which the gateway `address` (a multiaddr from the node's config) is reached from here."""
    try:
        url = urlsplit(multiaddr_to_url(address))
    except ValueError:
        return None
    api_host = urlsplit(api_url).hostname or ""
    host = url.hostname or ""
    if (ip := _ip(host)) is not None and ip.is_unspecified:
        host = api_host
    elif _loopback(host) and not _loopback(api_host):
        return None  # the node's loopback is not ours
    shown = f"[{host}]" if ":" in host else host
    return f"{url.scheme}://{shown}:{url.port}"


def find_gateway(client: KuboClient) -> str | None:
    """The node's gateway as a URL reachable from here, or None (no gateway, or its config is not readable)."""
    try:
        value = client.config_get("Addresses.Gateway")
    except FetchError as exc:
        logger.debug("no gateway from %s: %s", client.api_url, exc)
        return None
    addresses = value if isinstance(value, list) else [value]
    for address in addresses:
        if isinstance(address, str) and (url := gateway_url(address, client.api_url)) is not None:
            return url
    return None


@contextlib.contextmanager
def open_car(gateway: str, cid: str, timeout: float, source: str) -> Iterator[BinaryIO | None]:
    """The CAR of `cid` from `gateway` as a buffered stream, or None when the gateway cannot serve it that
    way (unreachable, an error status, another CAR order): the caller then uses the RPC API. A gateway
    that takes the request but answers nothing within `timeout` raises FetchError naming `source`: the
    node is looking for blocks it does not hold, and its RPC API would wait for them as long. Transport
    failures mid-stream raise FetchError naming `source`."""
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10.0, read=timeout))
    url = f"{gateway}/ipfs/{cid}?format=car&dag-scope=all&car-order=dfs&car-dups=y"
    try:
        response = pool.request(
            "GET", url, headers={"Accept": CAR_TYPE}, preload_content=False, decode_content=False
        )
    except urllib3.exceptions.ReadTimeoutError:
        pool.clear()
        raise FetchError(
            f"{source} sent nothing of {cid} within {timeout:g} s (IPFSNode.timeout): the node does not hold "
            "its blocks and got none from its peers; is a node that holds them running and connected to it?"
        ) from None
    except urllib3.exceptions.HTTPError as exc:
        logger.debug("gateway %s unusable: %s", gateway, exc)
        yield None
        return
    try:
        kind = response.headers.get("Content-Type", "").replace(" ", "")
        if response.status != 200 or not {"order=dfs", "dups=y"} <= set(kind.split(";")):
            logger.debug("gateway %s answered %s (%s)", gateway, response.status, kind)
            yield None
            return
        yield _Checked(cast(urllib3.HTTPResponse, response), source)
    finally:
        with contextlib.suppress(RuntimeError):  # raised when the body was read to its end
            response.shutdown()  # unblocks a read-ahead thread still waiting on the socket
        response.close()
        pool.clear()


class _Checked(io.BufferedReader):
    """The response body, its transport failures raised as FetchError naming the gateway."""

    def __init__(self, response: urllib3.HTTPResponse, source: str) -> None:
        response.auto_close = False  # as io.BufferedReader needs: reading at the end gives b"", not an error
        super().__init__(response, _READ_BUFFER)
        self.source = source

    def read(self, size: int | None = -1) -> bytes:
        try:
            return super().read(size)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise FetchError(
                f"the CAR stream from {self.source} broke: {exc} (a Kubo node ends it so when it stops, or "
                "when it cannot get a block from its peers within its Gateway.RetrievalTimeout)"
            ) from None
