"""Input sources by Type: each module exposes `fetch(source, dest, target) -> Path`, verified.

`dest` is where the input materialises (the job's Target); it must not exist yet or be an empty folder.
A folder-like input (S3 prefix, IPFS directory, extracted archive) becomes a folder at `dest`; a single
S3 object or URL becomes a folder at `dest` holding that one file, named after the last part of its key
or URL (as Bacalhau mounts it); an IPFS file CID becomes a file at `dest` (as Bacalhau mounts a CID).
A `local` input (a path on this machine, allow-listed) is copied to `dest` as the file or folder it is, or,
read-write, linked there. An `inline` input (a `data:` URL) becomes one file at `dest`, or, gzip data, the
tar.gz extracted there. On any failure `dest` is left as it was.

A fetcher reports the bytes it receives with `progress.advance` and, once it knows it, their total with
`progress.expect`; `fetch_source` meters every fetch (`transfer.metered`).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ..specs import SourceSpec
from ..transfer import location, metered, tree_size

__all__ = ["Source", "get_source"]


class Source(Protocol):
    """Materialise an input source at `dest`; `target` is the block saying how to reach it (or None)."""

    def __call__(self, source: SourceSpec, dest: Path, target: Any) -> Path: ...


_MODULES = {
    "s3": "s3",
    "s3PreSigned": "s3",
    "ipfs": "ipfs",
    "urlDownload": "url",
    "local": "local",
    "localDirectory": "local",
    "inline": "inline",
}

# which keyword of `fetch_source` each Type's fetcher gets as its `target`
_TARGETS = {
    "s3": "s3",
    "s3PreSigned": "s3",
    "ipfs": "ipfs",
    "urlDownload": "local",
    "local": "allowed_local_paths",
    "localDirectory": "allowed_local_paths",
    "inline": "local",  # none needed: the spec holds the data
}


def get_source(type_: str) -> Source:
    """The `fetch` function registered for an input source Type."""
    module = importlib.import_module(f"{__name__}.{_MODULES[type_]}")
    fetch: Source = module.fetch
    return fetch


def fetch_source(
    source: SourceSpec,
    dest: Path,
    *,
    s3: Any = None,
    ipfs: Any = None,
    local: Any = None,
    allowed_local_paths: Sequence[str] | None = None,
    partition: tuple[int, int] = (0, 1),
) -> Path:
    """Materialise one source at `dest` with the fetcher for its Type and the matching block.

    `allowed_local_paths` is the allow-list for `local`/`localDirectory` inputs (None: `$PBP_ALLOWED_LOCAL_PATHS`).
    `partition` is `(index, count)` of the execution fetching: an S3 prefix gives it only its share, as
    Bacalhau's S3 input source does (`partition`); other types ignore it.
    """
    given = {"s3": s3, "ipfs": ipfs, "local": local, "allowed_local_paths": allowed_local_paths}
    with metered("fetched", "from", location(source.params)) as transfer:
        fetch = get_source(source.type)
        target = given[_TARGETS[source.type]]
        if source.type == "s3" and partition != (0, 1):
            from .s3 import fetch as fetch_s3

            path = fetch_s3(source, dest, target, partition=partition)
        else:
            path = fetch(source, dest, target)
        if not path.is_symlink():  # a read-write local input is linked: nothing moved
            transfer.files, size = tree_size(path)
            if transfer.meter.moved == 0:  # a fetcher that counts nothing (a local copy): what landed
                transfer.nbytes = size
    return path
