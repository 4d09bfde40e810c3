"""The gzip compressors: ISA-L (``isal``) when it is importable, zlib otherwise.

`DEFAULT_COMPRESSOR` is fixed at import time; `_deflater` and `_inflater` build the compressor and
decompressor objects the writer and the extractor use.
"""

from __future__ import annotations

import zlib
from typing import Literal, Protocol, cast

try:
    from isal import isal_zlib as _isal_zlib

    HAVE_ISAL = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_ISAL = False

Compressor = Literal["isal", "zlib"]
DEFAULT_COMPRESSOR: Compressor = "isal" if HAVE_ISAL else "zlib"

CHUNK = 1 << 20  # tar stream bytes per compression step; also the file read/write size
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (zlib.error,)
if HAVE_ISAL:
    _DECOMPRESS_ERRORS += (cast("type[BaseException]", _isal_zlib.IsalError),)


class _Deflater(Protocol):
    def compress(self, data: memoryview, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _Inflater(Protocol):
    @property
    def unused_data(self) -> bytes: ...
    @property
    def unconsumed_tail(self) -> bytes: ...
    @property
    def eof(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def _deflater(compressor: Compressor, level: int) -> _Deflater:
    if not 0 <= level <= 9:
        raise ValueError(f"compression level must be 0-9, not {level}")
    if compressor == "isal":
        if not HAVE_ISAL:
            raise ValueError("compressor='isal' needs the isal package")
        return _isal_zlib.compressobj(min(level, 3), _isal_zlib.DEFLATED, 31)  # ISA-L levels are 0-3
    if compressor == "zlib":
        return zlib.compressobj(level, zlib.DEFLATED, 31)
    raise ValueError(f"unknown compressor {compressor!r}")


def _inflater() -> _Inflater:
    return _isal_zlib.decompressobj(31) if HAVE_ISAL else zlib.decompressobj(31)
