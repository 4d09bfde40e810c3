"""Many S3 objects fetched at once: obstore GETs from a pool of threads, each checked against its SHA-256.

This is how a plain result with a manifest comes back (`get_result`, and the S3 input source of a chained
job): every object is fetched pinned to the ETag it was published with, written and hashed by the thread
that fetched it, and a missing, replaced or altered object fails the whole fetch (the caller places
nothing). The objects are taken from an iterable as the fetch goes, so a caller that plans them lazily
keeps memory flat in their number. Keys that obstore's path rules cannot carry are left to the caller
(boto3's `download_verified`).

Why threads and obstore's blocking calls rather than its async ones: each awaited call crosses from
obstore's runtime to the event loop and back, and each file written from a coroutine crosses to a thread
and back; obstore's blocking `get` and `bytes` release the GIL, so a thread per request does the same work
with none of those hand-offs. Measured on 10 000 × 4 KiB, loopback MinIO, 2 cores, in-process, alternating
(bench/results/2026-12-02-many.md): 10.1–10.2 s and 3.9–4.5 s user CPU with 8 or 16 threads, against
15.8 s and 6.3 s for the event loop it replaces, and 11.5 s for `rclone copy --transfers 16`; 4 to 32
threads made no difference beyond the noise, so the caller's concurrency is used as it is.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checksums import b64
from ..errors import ChecksumMismatchError, FetchError
from ..progress import advance
from ..s3errors import is_obstore, wrapped
from ..slicedwrite import write_sliced, write_sliced_fd
from ..workers import for_each

__all__ = ["Wanted", "download_many", "restore_mode"]

_WHOLE = 4 * 1024 * 1024
"""Objects up to this size are read in one piece; larger ones are streamed in 1 MiB chunks."""
_MAX_THREADS = 64
"""However high the concurrency asked for, no more threads than this."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """One object to fetch: its key, where it goes, and what the manifest says it holds (mode included)."""

    key: str
    path: str | Path
    size: int
    sha256: str
    etag: str | None = None
    mode: int | None = None


def download_many(
    store: Any,
    bucket: str,
    items: Iterable[Wanted],
    *,
    concurrency: int,
    endpoint: str | None,
) -> None:
    """Fetch every item (keys obstore can carry, `obstore_can_carry`) into its path, check its size and
    SHA-256 and give it its mode, with `concurrency` threads; the first failure stops the rest and is
    raised (`ChecksumMismatchError` for a missing, replaced or altered object). `items` is consumed as the
    fetch goes (a generator keeps memory flat in the number of objects), one item at a time."""
    for_each(
        items,
        lambda item: _fetch_one(store, bucket, item, endpoint),
        threads=min(concurrency, _MAX_THREADS),
        name="pbp-s3-get",
    )


def restore_mode(path: str | Path, mode: int | None) -> None:
    """Give a fetched file its published permission bits (never setuid, setgid or sticky); a file without
    a recorded mode keeps the default."""
    if mode is not None:
        os.chmod(path, _permission_bits(mode))


def _permission_bits(mode: int) -> int:
    return stat.S_IMODE(mode) & 0o777


def _fetch_one(store: Any, bucket: str, item: Wanted, endpoint: str | None) -> None:
    import obstore
    from obstore.exceptions import NotFoundError, PreconditionError

    where = f"s3://{bucket}/{item.key}"
    try:
        result = obstore.get(store, item.key, options={"if_match": item.etag} if item.etag else None)
        if item.size <= _WHOLE:
            got, digest = _write_whole(item.path, result.bytes(), item.mode)
            advance(got)
        else:
            got, digest = _write_stream(item.path, result.stream(min_chunk_size=1024 * 1024), item.mode)
    except (NotFoundError, FileNotFoundError):
        raise ChecksumMismatchError(
            f"{where} is listed in the result's manifest but missing from the store: the result was altered "
            "after publishing"
        ) from None
    except PreconditionError:
        raise ChecksumMismatchError(
            f"{where} was replaced after publishing (its ETag is no longer {item.etag}): the result was "
            "altered"
        ) from None
    except Exception as exc:
        if not is_obstore(exc):
            raise
        raise wrapped(
            FetchError, exc, action="fetch", bucket=bucket, key=item.key, endpoint=endpoint
        ) from None
    _check(where, item, got, digest)


def _write_whole(path: str | Path, data: Any, mode: int | None) -> tuple[int, str]:
    """Write one object's bytes to a new file with its mode; its size and SHA-256.

    Four system calls (`open`, `write`, `fchmod`, `close`) where `open()` and `os.chmod` make eight: for
    10 000 × 4 KiB files from 16 threads, 1.21–1.25 s against 1.75–1.76 s on tmpfs (user + system CPU
    0.8–0.9 s less).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        write_sliced_fd(fd, data)
        if mode is not None:
            os.fchmod(fd, _permission_bits(mode))
    finally:
        os.close(fd)
    return len(data), b64(hashlib.sha256(data).digest())


def _write_stream(path: str | Path, chunks: Iterable[Any], mode: int | None) -> tuple[int, str]:
    """Write a large object chunk by chunk, showing progress; its size and SHA-256."""
    hasher = hashlib.sha256()
    got = 0
    with open(path, "wb") as out:
        for chunk in chunks:
            write_sliced(out, chunk)
            hasher.update(chunk)
            got += len(chunk)
            advance(len(chunk))
    restore_mode(path, mode)
    return got, b64(hasher.digest())


def _check(where: str, item: Wanted, size: int, sha256: str) -> None:
    if size != item.size or sha256 != item.sha256:
        raise ChecksumMismatchError(
            f"checksum mismatch for {where}: got {size} bytes hashing to {sha256}, the result's manifest "
            f"records {item.size} bytes hashing to {item.sha256}; the object was altered after publishing"
        )
