"""CAR v1 files (what Kubo's `dag export` streams and `dag import` reads): writing, and verified reading.

`CarStore.load` reads a CAR from disk once, checks every block against the hash in its CID (a tampered
block raises ChecksumMismatchError) and keeps only an index of offsets, so memory stays flat in the DAG's
size; blocks are read back from disk on demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ChecksumMismatchError, FetchError
from .cid import CID, IDENTITY, encode_varint, read_varint

__all__ = ["CarStore", "encode_frame", "encode_header", "read_header", "read_section"]

MAX_HEADER = 1 << 20
MAX_FRAME = 8 << 20


def encode_header(roots: Sequence[bytes]) -> bytes:
    """The length-prefixed dag-cbor header `{"roots": [...], "version": 1}` for binary root CIDs."""
    if len(roots) > 23:
        raise ValueError("at most 23 roots")
    body = bytearray(b"\xa2\x65roots" + bytes([0x80 | len(roots)]))
    for root in roots:
        raw = b"\x00" + root  # tag 42: a CID, prefixed by the identity multibase byte
        body += b"\xd8\x2a" + _cbor_head(2, len(raw)) + raw
    body += b"\x67version\x01"
    return encode_varint(len(body)) + bytes(body)


def encode_frame(cid: bytes, block: bytes) -> bytes:
    """One CAR section: varint length, binary CID, block bytes."""
    return encode_varint(len(cid) + len(block)) + cid + block


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes([major << 5 | extra]) + value.to_bytes(width, "big")
    raise ValueError("CBOR value too large")


def _cbor_decode(buf: bytes, pos: int = 0, depth: int = 0) -> tuple[Any, int]:
    """A minimal CBOR reader for CAR headers (ints, strings, arrays, maps, tag 42, simple values)."""
    if depth > 16 or pos >= len(buf):
        raise ValueError("malformed CBOR")
    first = buf[pos]
    major, info = first >> 5, first & 31
    pos += 1
    if info < 24:
        value = info
    elif info <= 27:
        width = 1 << (info - 24)
        value = int.from_bytes(buf[pos : pos + width], "big")
        pos += width
    else:
        raise ValueError("unsupported CBOR encoding")
    if major == 0:
        return value, pos
    if major in (2, 3):
        raw = buf[pos : pos + value]
        if len(raw) != value:
            raise ValueError("truncated CBOR string")
        return (raw if major == 2 else raw.decode("utf-8")), pos + value
    if major == 4:
        items = []
        for _ in range(value):
            item, pos = _cbor_decode(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        mapping: dict[Any, Any] = {}
        for _ in range(value):
            key, pos = _cbor_decode(buf, pos, depth + 1)
            mapping[key], pos = _cbor_decode(buf, pos, depth + 1)
        return mapping, pos
    if major == 6 and value == 42:
        raw, pos = _cbor_decode(buf, pos, depth + 1)
        if not isinstance(raw, bytes) or not raw.startswith(b"\x00"):
            raise ValueError("malformed CID in CBOR")
        return CID.from_bytes(raw[1:]), pos
    if major == 7 and info in (20, 21, 22):
        return {20: False, 21: True, 22: None}[info], pos
    raise ValueError("unsupported CBOR item")


def _read_exact(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise FetchError("the CAR stream is truncated")
    return data


def _read_varint(handle: BinaryIO) -> int | None:
    """The next varint, or None at a clean end of file."""
    raw = bytearray()
    while True:
        byte = handle.read(1)
        if not byte:
            if raw:
                raise FetchError("the CAR stream is truncated")
            return None
        raw += byte
        if byte[0] < 0x80:
            return read_varint(bytes(raw))[0]
        if len(raw) > 9:
            raise FetchError("malformed CAR section length")


def read_header(handle: BinaryIO) -> list[CID]:
    """The roots of the CAR v1 stream `handle` (its header read); FetchError when it is not one."""
    length = _read_varint(handle)
    if length is None or not 0 < length <= MAX_HEADER:
        raise FetchError("not a CAR stream: missing or oversized header")
    try:
        header, _ = _cbor_decode(_read_exact(handle, length))
    except ValueError as exc:
        raise FetchError(f"not a CAR stream: {exc}") from None
    if not isinstance(header, dict) or header.get("version") != 1:
        raise FetchError("only CAR version 1 is supported")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(root, CID) for root in roots):
        raise FetchError("the CAR header has no valid roots")
    return list(roots)


def read_section(handle: BinaryIO) -> tuple[CID, int, bytes] | None:
    """The next section as (CID, where its block starts, section bytes), its block checked against the CID's
    hash (ChecksumMismatchError when altered); None at a clean end of the stream."""
    size = _read_varint(handle)
    if size is None:
        return None
    if not 0 < size <= MAX_FRAME:
        raise FetchError(f"CAR section of {size} bytes is out of bounds")
    section = _read_exact(handle, size)
    try:
        cid, start = CID.decode(section)
        valid = cid.verify(memoryview(section)[start:])
    except ValueError as exc:
        raise FetchError(f"malformed block in the CAR stream: {exc}") from None
    if not valid:
        raise ChecksumMismatchError(
            f"block {cid} in the CAR stream does not match its hash: the data was altered"
        )
    return cid, start, section


class CarStore:
    """The verified blocks of a CAR file, looked up by multihash (a CIDv0 and CIDv1 share a block)."""

    def __init__(self, path: Path, roots: list[CID], index: dict[bytes, tuple[int, int]]) -> None:
        self.path = path
        self.roots = roots
        self._index = index
        self._handle: BinaryIO | None = None

    @classmethod
    def load(cls, path: Path) -> CarStore:
        """Index a CAR v1 file, verifying every block's hash; FetchError when malformed."""
        index: dict[bytes, tuple[int, int]] = {}
        with open(path, "rb") as handle:
            roots = read_header(handle)
            while (section := read_section(handle)) is not None:
                cid, start, body = section
                index[cid.multihash] = (handle.tell() - len(body) + start, len(body) - start)
        return cls(path, roots, index)

    def get(self, cid: CID) -> bytes | None:
        """The block for `cid`, or None when the CAR lacks it."""
        if cid.hash_code == IDENTITY:
            return cid.digest
        where = self._index.get(cid.multihash)
        if where is None:
            return None
        if self._handle is None:
            self._handle = open(self.path, "rb")  # noqa: SIM115 - kept open across lookups, closed in close()
        self._handle.seek(where[0])
        return self._handle.read(where[1])

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        """Close the file handle used for lookups."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> CarStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
