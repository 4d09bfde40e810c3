"""Tar archives built member by member, exactly as given: how the tests make hostile archives."""

from __future__ import annotations

import gzip
import io
import tarfile
from typing import Any

Member = tuple[tarfile.TarInfo, bytes]


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **attrs: Any) -> Member:
    """One tar member, exactly as given (no safety checks)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.mode = 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def tar_bytes(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed tar holding exactly `members`."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return raw.getvalue()


def tar_gz(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar.gz holding exactly `members`."""
    return gzip.compress(tar_bytes(*members, fmt=fmt), compresslevel=1, mtime=0)
