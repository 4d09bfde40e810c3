"""Deterministic, streaming tar.gz archives of result folders, and safe, atomic extraction of them.

The archives are PAX-format tar inside one gzip member (header: no file name, mtime 0), which GNU tar,
Python's tarfile and Go's archive/tar + compress/gzip (Bacalhau's reader) all accept.

Compression uses ISA-L (``isal``) when it is importable and zlib otherwise; the choice is made once at
import time (`DEFAULT_COMPRESSOR`) and can be overridden per call with ``compressor="zlib"`` or
``compressor="isal"``. Output is byte-identical for the same folder, level and compressor; ISA-L and
zlib produce different (equally valid) bytes.

Modules: `write` (the writer), `extract` (the extractor), `codec` (compressor choice), `checks`
(symlink and path checks both sides share).
"""

from __future__ import annotations

from prefect_bacalhau_publish.errors import FetchError as FetchError
from prefect_bacalhau_publish.errors import PublishError as PublishError
from prefect_bacalhau_publish.errors import UnsafeArchiveError as UnsafeArchiveError

from .checks import MAX_DEPTH as MAX_DEPTH
from .codec import CHUNK as CHUNK
from .codec import DEFAULT_COMPRESSOR, HAVE_ISAL, Compressor
from .extract import extract_archive
from .write import ArchiveInfo, archive_digest, write_archive

__all__ = [
    "DEFAULT_COMPRESSOR",
    "HAVE_ISAL",
    "ArchiveInfo",
    "Compressor",
    "archive_digest",
    "extract_archive",
    "write_archive",
]
