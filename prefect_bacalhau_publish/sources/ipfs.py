"""The `ipfs` input source: fetch a CID from a Kubo node as a CAR, verify every block, write it safely.

A folder CID becomes a folder at `dest`, a file CID a file at `dest`, written in a temporary folder beside
`dest` and renamed into place only when the whole DAG has arrived and checked out; on any failure `dest` is
left as it was. Modes stored in the DAG are applied to what is inside the folder (permission bits only).

The CAR comes from the node's own gateway when it has one (`kubo.gateway`): depth-first with repeats, each
block hash-checked and written as it streams, so the result lands once on disk. Otherwise it comes from the
RPC API's `dag/export` (no repeats, any order): spooled beside `dest`, indexed, then written.

Kubo's bitswap server never sends a zero-length block: boxo (since v0.24, still in Kubo 0.42) uses a size
of 0 to mean "present, size not read", so a want-block for it gets DONT_HAVE. That block is every empty
file's under raw leaves (`unixfs-v1-2025`): a DAG with an empty file, held by another node, would never
arrive. Its content is known, so the fetching node is given it first (`_seed_empty_block`), unpinned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import FetchError
from ..kubo.car import CarStore
from ..kubo.carstream import OrderedCar
from ..kubo.cid import CID
from ..kubo.export import export_dag, show_entry
from ..kubo.gateway import find_gateway, open_car
from ..kubo.node import KuboNode, NodeSettings
from ..kubo.rpc import KuboClient
from ..progress import advance, expect
from ..slicedwrite import write_sliced
from ..specs import IPFSParams, SourceSpec
from .place import check_dest, place

__all__ = ["fetch", "fetch_cid"]

_ROOT_ARRIVED = 1 << 20
"""CAR bytes after which the root block (sent first) is surely on the node, so its size can be read."""
EMPTY_BLOCK = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
"""The zero-length raw block (sha2-256): an empty file's CID with raw leaves."""
logger = logging.getLogger(__name__)


def _seed_empty_block(client: KuboClient) -> None:
    """Give the node the zero-length block unless it holds it (no peer would send it; see the module's
    docstring). Best effort: a node that refuses `block/put` (API.Authorizations) is left as it is."""
    if client.has_block(EMPTY_BLOCK):
        return
    try:
        stored = client.put_block(b"")
    except FetchError as exc:
        logger.debug("the empty block was not stored on %s: %s", client.api_url, exc)
        return
    if stored != EMPTY_BLOCK:
        logger.debug("%s stored the empty block as %s, not %s", client.api_url, stored, EMPTY_BLOCK)


def _spool(client: KuboClient, cid: CID, car_path: Path, total: int | None) -> None:
    """Save the DAG's CAR; its size (`total`, when the node already knew it) is announced (`expect`) as soon
    as the node holds the root block."""
    if total is not None:
        expect(total)
    got = 0
    with client.dag_export(str(cid)) as chunks, open(car_path, "wb") as handle:
        for chunk in chunks:
            write_sliced(handle, chunk)
            advance(len(chunk))
            got += len(chunk)
            if total is None and got >= _ROOT_ARRIVED:  # the root, the first block, came from the network
                total = client.cumulative_size(str(cid)) or 0
                if total:
                    expect(total)


def _check_roots(roots: list[CID], root: CID, source: str) -> None:
    if not any(r.multihash == root.multihash and r.codec == root.codec for r in roots):
        shown = ", ".join(map(str, roots)) or "nothing"
        raise FetchError(f"the CAR from {source} is rooted at {shown}, not at {root}")


def _stream(
    client: KuboClient, gateway: str, root: CID, out: Path, timeout: float, total: int | None
) -> bool:
    """Write the DAG at `out` from the gateway's CAR as it streams, announcing its size (`total`) when known;
    False when the gateway cannot serve it."""
    source = f"the gateway {gateway} of the Kubo node at {client.api_url}"
    with open_car(gateway, str(root), timeout, source) as handle:
        if handle is None:
            return False
        if total is not None:
            expect(total)
        with OrderedCar(handle, source, advance) as blocks:
            _check_roots(blocks.roots, root, source)
            export_dag(blocks, root, out)
    return True


def fetch_cid(cid: str, dest: Path, node: NodeSettings | None = None) -> Path:
    """Fetch `cid` from `node` (default: the local Kubo RPC API) into `dest`; returns `dest`."""
    node = node or KuboNode()
    try:
        root = CID.parse(cid)
    except ValueError as exc:
        raise FetchError(str(exc)) from None
    dest = Path(dest)
    check_dest(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.ipfs-", dir=dest.parent))
    try:
        with KuboClient.from_node(node, error=FetchError) as client:
            client.version()
            _seed_empty_block(client)
            gateway = find_gateway(client)
            total = client.cumulative_size(str(root))
            streamed = gateway is not None and _stream(
                client, gateway, root, work / "out", node.timeout, total
            )
            if not streamed:
                _spool(client, root, work / "dag.car", total)
        if not streamed:
            with CarStore.load(work / "dag.car") as store:
                _check_roots(store.roots, root, client.api_url)
                export_dag(store, root, work / "out")
        place(work / "out", dest)
    except OSError as exc:
        raise FetchError(
            f"cannot write the content of {cid} under {dest.parent}: {_why(exc, work)}"
        ) from None
    finally:
        _discard(work)
    return dest


def _why(exc: OSError, work: Path) -> str:
    """An OSError naming the entry inside the result (or the CAR spool), not the staging folder."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else ""
    if not name.startswith(f"{work}{os.sep}"):
        return str(exc)
    rel = os.path.relpath(name, work / "out")
    return f"{exc.strerror} ({'the spooled CAR' if rel.startswith('..') else show_entry(rel)})"


def _discard(work: Path) -> None:
    """Remove the staging folder, opening first the folders a DAG's modes closed (symlinks untouched)."""
    for folder, dirnames, _files in os.walk(work):
        for name in dirnames:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o700)
    shutil.rmtree(work, ignore_errors=True)


def fetch(source: SourceSpec, dest: Path, target: NodeSettings | None) -> Path:
    """Materialise an `ipfs` input source (`{"CID": ...}`) at `dest`, verified block by block."""
    params = source.params
    if not isinstance(params, IPFSParams):
        raise FetchError(f"invalid storage source type. expected ipfs, but received: {source.type}")
    return fetch_cid(params.cid, dest, target)
