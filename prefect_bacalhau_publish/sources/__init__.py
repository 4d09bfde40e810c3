"""Input sources by Type: each module exposes `fetch(source, dest, target) -> Path`, verified.

`dest` is where the input materialises (the job's Target); it must not exist yet or be an empty folder.
A folder-like input (S3 prefix, IPFS directory, extracted archive) becomes a folder at `dest`; a single
S3 object or URL becomes a folder at `dest` holding that one file, named after the last part of its key
or URL (as Bacalhau mounts it); an IPFS file CID becomes a file at `dest` (as Bacalhau mounts a CID).
On any failure `dest` is left as it was.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from ..specs import SourceSpec

__all__ = ["Source", "get_source"]


class Source(Protocol):
    """Materialise an input source at `dest`; `target` is the block saying how to reach it (or None)."""

    def __call__(self, source: SourceSpec, dest: Path, target: Any) -> Path: ...


_MODULES = {
    "s3": "s3",
    "s3PreSigned": "s3",
    "ipfs": "ipfs",
    "urlDownload": "url",
    "localDirectory": "local_directory",
}


def get_source(type_: str) -> Source:
    """The `fetch` function registered for an input source Type."""
    module = importlib.import_module(f"{__name__}.{_MODULES[type_]}")
    fetch: Source = module.fetch
    return fetch


def fetch_source(
    source: SourceSpec, dest: Path, *, s3: Any = None, ipfs: Any = None, local: Any = None
) -> Path:
    """Materialise one source at `dest` with the fetcher for its Type and the matching block."""
    target = {"s3": s3, "s3PreSigned": s3, "ipfs": ipfs, "urlDownload": local, "localDirectory": None}[
        source.type
    ]
    return get_source(source.type)(source, dest, target)
