"""The `ipfs` publisher: add a result folder to a Kubo node and return its root CID, verified locally.

Nothing is sent that `get` would refuse: a symlink whose target is absolute or leaves the folder (lexically,
or through the folder's other symlinks) or folders nested too deep stop the publish before the node is
contacted. Every CID-deciding flag of the block's `cid_profile` is sent explicitly (and `preserve-mode` with
the entries' modes when `preserve_mode` is on, which turns raw leaves off as Kubo does); the bytes feed a
local UnixFS import as they are sent, and a node CID that differs from the local one is refused.

A folder under `STREAM_FROM` bytes goes to `/api/v0/add` as one multipart request, as `ipfs add -r` sends
it. Two import settings cannot be sent with `add`: the HAMT sharding threshold and its size-estimation mode
are node config (`Import.UnixFSHAMTDirectorySize*`). They only matter for folders with thousands of
entries, so the publisher reads them (when the node allows), compares the DAG shape the node would build
with the profile's own (no file contents needed) and, only when they differ, builds the CAR locally and
sends it through `/api/v0/dag/import` instead: the published CID is always the profile's.

A larger folder goes up as two add requests at once (`_Streams`): Kubo imports one request in one
goroutine, so one request leaves a core idle. The folders are then built locally (the profile's, whatever
the node's config), imported, and the root block put with a recursive pin; this needs `/api/v0/dag/import`,
`/block/put` and `/pin/rm` besides `/add`. Measured on 2 cores with a 1 GiB folder: one request took
1.03-1.08× the time of `ipfs add -r`, two take 0.86-0.91× (bench/results/2026-12-02-ipfs-streams.md).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IPFSPublishError
from ..kubo.car import encode_frame, encode_header
from ..kubo.cid import CID
from ..kubo.export import MAX_FOLDER_DEPTH, show_entry, symlink_problem
from ..kubo.node import KuboNode, NodeSettings
from ..kubo.rpc import MODE_VERSION, KuboClient, add_flags
from ..kubo.unixfs import (
    PROFILES,
    Entry,
    FileBuilder,
    ImportParams,
    Link,
    SizeEstimation,
    UnsupportedEntryError,
    build_tree,
    cid_string,
    entry_mode,
    import_tree,
    iter_blocks,
    scan,
    shape_cid,
)
from ..progress import advance
from ..workers import for_each

if TYPE_CHECKING:  # the spec models load after the upload starts on the CLI's `-p ipfs` (cli.publish)
    from ..specs import ExecutionContext, PublishedResult, PublisherSpec

__all__ = ["node_import_params", "publish", "publish_folder", "published"]

logger = logging.getLogger(__name__)

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DEFAULT_THRESHOLD = 256 * 1024
_ESTIMATIONS: dict[str, SizeEstimation] = {"links": "links", "block": "block", "disabled": "disabled"}


def _config(client: KuboClient, key: str) -> Any:
    """A node config value, or None when unset or not readable (an auth token limited to some paths)."""
    try:
        return client.config_get(key)
    except IPFSPublishError as exc:
        logger.debug("cannot read %s from the node, assuming Kubo's default: %s", key, exc)
        return None


def _parse_bytes(value: Any) -> int:
    """`262144`, `"256KiB"`, `"1MB"` → bytes; Kubo's default threshold when unset or unreadable."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().replace(" ", "").lower()
        number = text.rstrip("kmgib")
        unit = text[len(number) :]
        if number.isdigit() and unit in _UNITS:
            return int(number) * _UNITS[unit]
    return _DEFAULT_THRESHOLD


def node_import_params(
    client: KuboClient, params: ImportParams, version: tuple[int, int, int]
) -> ImportParams:
    """The settings this node applies to an `add` carrying `params`' flags (its HAMT config, its version)."""
    if version < (0, 35, 0):  # no max-*-links/fanout flags yet: fixed defaults, older config key
        threshold = _parse_bytes(_config(client, "Internal.UnixFSShardingSizeThreshold"))
        return replace(
            params,
            max_file_links=174,
            max_directory_links=0,
            hamt_fanout=256,
            hamt_threshold=threshold,
            size_estimation="links",
        )
    threshold = _parse_bytes(_config(client, "Import.UnixFSHAMTDirectorySizeThreshold"))
    mode = _config(client, "Import.UnixFSHAMTDirectorySizeEstimation") if version >= (0, 40, 0) else None
    return replace(params, hamt_threshold=threshold, size_estimation=_ESTIMATIONS.get(str(mode), "links"))


class _Tap:
    """Builds each file's DAG from the bytes as they are sent to the node."""

    def __init__(self, params: ImportParams) -> None:
        self._params = params
        self._links: dict[Entry, Link] = {}
        self._current: tuple[Entry, FileBuilder] | None = None

    def _builder(self, entry: Entry) -> FileBuilder:
        return FileBuilder(self._params, mode=entry_mode(entry, self._params))

    def file_data(self, entry: Entry, data: bytes | memoryview) -> None:
        if self._current is None or self._current[0] is not entry:
            self._current = (entry, self._builder(entry))
        self._current[1].write(data)
        advance(len(data))

    def file_done(self, entry: Entry) -> None:
        builder = self._current[1] if self._current and self._current[0] is entry else self._builder(entry)
        self._links[entry] = builder.finish()
        self._current = None

    def link(self, entry: Entry) -> Link:
        try:
            return self._links[entry]
        except KeyError:
            raise IPFSPublishError(f"{entry.path} was not sent to the node") from None


def _same(a: str, b: str) -> bool:
    try:
        return CID.parse(a) == CID.parse(b)
    except ValueError:
        return False


def _publish_by_add(client: KuboClient, tree: Entry, params: ImportParams, profile: str, pin: bool) -> str:
    tap = _Tap(params)
    node_cid = client.add_folder(
        tree.path, add_flags(params, pin=pin), tree=tree, tap=tap, read_size=params.chunk_size
    )
    local = cid_string(build_tree(tree, params, tap.link).cid)
    if not _same(node_cid, local):
        refusal = f"refusing to publish {node_cid}" + (" (the node keeps it pinned)" if pin else "")
        raise _mismatch(client, node_cid, tree.path, profile, params, local, refusal)
    return local


def _mismatch(
    client: KuboClient,
    made: str | None,
    path: Path,
    profile: str,
    params: ImportParams,
    local: str,
    refusal: str,
) -> IPFSPublishError:
    """The node made another CID of `path` than the profile gives."""
    return IPFSPublishError(
        f"Kubo at {client.api_url} made {made} of {path}, but the {profile} profile"
        f"{' with modes' if params.preserve_mode else ''} gives {local}: the node applies other import settings "
        f"(check its Import.* config); {refusal}"
    )


def _car_stream(tree: Entry, params: ImportParams, root: Link) -> Iterator[bytes]:
    """The CAR of the folder: header with the known root, then every block as it is rebuilt."""
    yield encode_header([root.cid])
    blocks = iter_blocks(tree, params, advance)  # progress: the second read of the files, as they are sent
    while True:
        try:
            cid, block = next(blocks)
        except StopIteration as done:
            if done.value.cid != root.cid:
                raise IPFSPublishError(f"{tree.path} changed while it was being published") from None
            return
        yield encode_frame(cid, block)


def _publish_by_car(client: KuboClient, tree: Entry, params: ImportParams, pin: bool) -> str:
    root = import_tree(tree, params)
    local = cid_string(root.cid)
    roots = client.dag_import(_car_stream(tree, params, root), pin=pin)
    if pin and not any(_same(local, r) for r in roots):
        raise IPFSPublishError(f"Kubo at {client.api_url} imported roots {roots}, expected {local}")
    if not pin:
        client.dag_stat(local)  # the node must now hold the whole DAG
    return local


FIRST_SHARE = 0.5
"""The share of the bytes sent with the folder itself; the rest go in the second request."""
STREAM_FROM = 64 * 1024 * 1024
"""Results with at least this many bytes of files (and two files or more) are sent in two requests."""


def _files(tree: Entry, prefix: bytes = b"") -> list[tuple[Entry, bytes]]:
    """The files of `tree` with their paths (`prefix` + `/name`...)."""
    files: list[tuple[Entry, bytes]] = []
    stack = [(tree, prefix)]
    while stack:
        entry, path = stack.pop()
        if entry.kind == "dir":
            stack.extend((child, path + b"/" + child.name) for child in entry.children)
        elif entry.kind == "file":
            files.append((entry, path))
    return files


def _bytes(entry: Entry) -> int:
    """The bytes of the files of `entry` (a file's own size; none for a symlink)."""
    return sum(file.size for file, _path in _files(entry))


def _carve(tree: Entry, wanted: int) -> tuple[Entry, list[Entry]]:
    """Split off whole files and folders worth about `wanted` bytes: (the folder without them, them).

    In each folder, entries are taken from the end of the name order; one that is too big is kept, or,
    if it is a folder, is carved in turn and ends the folder's turn: each folder keeps at most one carved
    sub-folder, and what was taken from it comes after that sub-folder by name."""
    taken: list[Entry] = []

    def carve(folder: Entry) -> Entry:
        nonlocal wanted
        kept = list(folder.children)
        for index in range(len(kept) - 1, -1, -1):
            if wanted <= 0:
                break
            child = kept[index]
            size = _bytes(child)
            if size <= wanted:
                taken.append(child)
                wanted -= size
                del kept[index]
            elif child.kind == "dir":
                kept[index] = carve(child)
                break
        return replace(folder, children=kept)

    return carve(tree), taken


class _Streams:
    """A large folder sent as two add requests at once, pinned without Kubo reading a block back.

    About half of the bytes, as whole files and folders (`_carve`), go up in a second request under
    throwaway names; the first sends the folder without them. Both requests are pinned by their own `add`
    (the pin `add` makes, nothing read back), each file's CID is checked against the local one, the folders
    and symlinks are built locally and imported as one CAR, and the root block is put again with `pin`:
    Kubo pins it recursively as `add` pins its root, without walking the DAG, which is whole by then.
    `pin update` from the first request's pin read back the second's blocks: 0.2-0.4 s per GiB, a tenth of
    the publish; `pin add` or `dag import --pin-roots` read them all. The throwaway pins are removed
    whatever happens.
    """

    def __init__(self, client: KuboClient, tree: Entry, params: ImportParams, profile: str) -> None:
        self.client = client
        self.tree = tree
        self.params = params
        self.profile = profile
        self.token = uuid.uuid4().hex.encode()
        self.renamed: dict[Entry, Entry] = {}
        self.links: dict[Entry, Link] = {}
        self.staged: dict[int, str] = {}

    def publish(self, kept: Entry, taken: list[Entry], pin: bool) -> str:
        plain = _utf8(self.tree.name) and self.tree.name not in (b"", b".", b"..")
        name = self.tree.name if plain else b"result"
        staging = Entry(self.token, self.tree.path, "dir")
        for number, entry in enumerate(taken):
            copy = replace(entry, name=b"%d" % number)
            self.renamed[copy] = entry
            staging.children.append(copy)
        requests = [(0, kept, name), (1, staging, self.token)]
        try:
            for_each(requests, self._send, threads=len(requests), name="ipfs-add")
            return self._finish(pin)
        finally:
            self._unstage()

    def _send(self, request: tuple[int, Entry, bytes]) -> None:
        index, folder, name = request
        tap = _Tap(self.params)
        added = self.client.add_tree(
            folder, name, add_flags(self.params, pin=True), tap=tap, read_size=self.params.chunk_size
        )
        folder_cid = added.get(name.decode())
        if folder_cid is None:
            raise IPFSPublishError(f"Kubo at {self.client.api_url} did not report the CID of an added folder")
        self.staged[index] = folder_cid
        for entry, path in _files(folder, name):
            link = tap.link(entry)
            local = cid_string(link.cid)
            made = added.get(path.decode())
            if made is None or not _same(made, local):
                refusal = "refusing to publish the folder"
                raise _mismatch(self.client, made, entry.path, self.profile, self.params, local, refusal)
            self.links[self.renamed.get(entry, entry)] = link

    def _finish(self, pin: bool) -> str:
        blocks: list[tuple[bytes, bytes]] = []
        root = build_tree(self.tree, self.params, self.links.__getitem__, lambda c, b: blocks.append((c, b)))
        local = cid_string(root.cid)

        def car() -> Iterator[bytes]:
            yield encode_header([root.cid])
            for cid, block in blocks:
                yield encode_frame(cid, block)

        self.client.dag_import(car(), pin=False)
        if pin:
            # Pinned as `add` pins its root, without Kubo reading the DAG again: every file under it came from
            # one of the two adds with its CID checked, and every folder block was just imported.
            block = next(block for cid, block in blocks if cid == root.cid)
            made = self.client.put_block(block, dag_pb=self.params.cid_version, pin=True)
            if not _same(made, local):
                raise IPFSPublishError(
                    f"Kubo at {self.client.api_url} stored the root as {made}, not {local}"
                )
        return local

    def _unstage(self) -> None:
        cids = list(self.staged.values())
        self.staged.clear()
        if not cids:  # no add finished: nothing was pinned
            return
        try:
            self.client.pin_rm(*cids)  # one request; Kubo stops at a CID it cannot unpin
        except IPFSPublishError:
            for cid in cids:
                try:
                    self.client.pin_rm(cid)
                except IPFSPublishError as exc:
                    logger.warning("could not unpin %s, a folder staged while publishing: %s", cid, exc)


def _streamable(tree: Entry, files: list[tuple[Entry, bytes]]) -> tuple[Entry, list[Entry]] | None:
    """The two requests of a large result (`_carve`), or None: under STREAM_FROM bytes, a path Kubo would
    not report as sent (not UTF-8), or too little that could be split off whole (under a quarter)."""
    total = sum(entry.size for entry, _path in files)
    if total < STREAM_FROM or len(files) < 2 or not all(_utf8(path) for _entry, path in files):
        return None
    kept, taken = _carve(tree, int(total * (1 - FIRST_SHARE)))
    return (kept, taken) if sum(map(_bytes, taken)) >= total // 4 else None


def _utf8(path: bytes) -> bool:
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_tree(tree: Entry) -> None:
    """Refuse what `get` would refuse: symlinks leaving the folder, folders nested too deep.

    The rules are the fetch side's (`symlink_problem`, then each link resolved through the others);
    entries are named by their path inside the folder.
    """
    top = os.path.realpath(tree.path)
    stack: list[tuple[Entry, str, int]] = [(child, os.fsdecode(child.name), 0) for child in tree.children]
    while stack:
        entry, rel, depth = stack.pop()
        if entry.kind == "dir":
            if depth + 1 > MAX_FOLDER_DEPTH:
                raise IPFSPublishError(
                    f"{show_entry(rel)} in the result folder nests deeper than {MAX_FOLDER_DEPTH} folders, "
                    "which get refuses; refusing to publish it"
                )
            stack.extend((child, f"{rel}/{os.fsdecode(child.name)}", depth + 1) for child in entry.children)
        elif entry.kind == "symlink":
            problem = symlink_problem(entry.target, depth)
            if problem is None and os.path.commonpath([top, os.path.realpath(entry.path)]) != top:
                problem = "it resolves outside the result through another symlink"
            if problem is not None:
                raise IPFSPublishError(
                    f"symlink {show_entry(rel, entry.target)} in the result folder: {problem}, which get "
                    "refuses; refusing to publish it"
                )


def publish_folder(result_dir: Path, node: NodeSettings) -> str:
    """Publish a folder to the node; returns its root CID (the `cid_profile`'s CID, checked locally)."""
    params = PROFILES[node.cid_profile]
    if node.preserve_mode:
        params = params.with_modes()
    if not result_dir.is_dir():
        raise IPFSPublishError(f"result folder {result_dir} does not exist or is not a folder")
    top = result_dir.resolve() if result_dir.is_symlink() else result_dir
    try:
        tree = scan(top)
    except UnsupportedEntryError as exc:
        raise IPFSPublishError(
            f"{show_entry(os.path.relpath(exc.path, top))} in the result folder is {exc.what}; "
            "UnixFS holds files, folders and symlinks only"
        ) from None
    except OSError as exc:
        raise IPFSPublishError(f"cannot read result folder {result_dir}: {exc}") from None
    check_tree(tree)
    with KuboClient.from_node(node) as client:
        version = client.version()
        if node.preserve_mode and version < MODE_VERSION:
            raise IPFSPublishError(
                f"Kubo at {client.api_url} cannot store modes (add --preserve-mode came in Kubo "
                f"{'.'.join(map(str, MODE_VERSION))}): upgrade it or turn IPFSNode.preserve_mode off"
            )
        if (split := _streamable(tree, _files(tree))) is not None:
            return _Streams(client, tree, params, node.cid_profile).publish(*split, node.pin)
        applied = node_import_params(client, params, version)
        if shape_cid(tree, params) == shape_cid(tree, applied):
            return _publish_by_add(client, tree, params, node.cid_profile, node.pin)
        logger.info(
            "Kubo at %s would shard %s differently from the %s profile (its Import.* config); "
            "publishing a locally built CAR through dag/import instead",
            client.api_url,
            result_dir,
            node.cid_profile,
        )
        return _publish_by_car(client, tree, params, node.pin)


def publish(
    result_dir: Path, spec: PublisherSpec, context: ExecutionContext, target: NodeSettings | None
) -> PublishedResult:
    """Publish `result_dir` to IPFS: `{"Type": "ipfs", "Params": {"CID": ...}}`, pinned when `target.pin`."""
    if spec.type != "ipfs":
        raise IPFSPublishError(f"invalid publisher type. expected ipfs, but received: {spec.type}")
    return published(publish_folder(Path(result_dir), target if target is not None else KuboNode()))


def published(cid: str) -> PublishedResult:
    """The published result spec of a root CID: `{"Type": "ipfs", "Params": {"CID": cid}}`."""
    from ..specs import PublishedResult

    return PublishedResult.model_validate({"Type": "ipfs", "Params": {"CID": cid}})
