"""The two protobuf messages of UnixFS, written by hand: dag-pb `PBNode`/`PBLink` and UnixFS `Data`.

Encoding follows what Kubo (boxo + go-codec-dagpb) writes byte for byte: a node's links come before its
data, every link carries Hash, Name (even empty) and Tsize, and UnixFS fields are written in field order.
Of UnixFS 1.5's metadata, `mode` (field 7) is read and written; `mtime` (field 8) is skipped when read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .cid import encode_varint, read_varint

__all__ = ["PBLink", "UnixFSData", "decode_node", "decode_unixfs", "encode_node", "encode_unixfs"]

# UnixFS Data.Type values
RAW, DIRECTORY, FILE, METADATA, SYMLINK, HAMT_SHARD = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True, slots=True)
class PBLink:
    """A dag-pb link: binary CID, name and cumulative size of the target DAG."""

    cid: bytes
    name: bytes
    tsize: int


@dataclass(frozen=True, slots=True)
class UnixFSData:
    """The UnixFS `Data` message carried in a dag-pb node's Data field (`mode`: unix permission bits)."""

    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()
    hash_type: int | None = None
    fanout: int | None = None
    mode: int | None = None


def _bytes_field(number: int, value: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(value)) + value


def _int_field(number: int, value: int) -> bytes:
    return encode_varint(number << 3) + encode_varint(value)


def encode_link(link: PBLink) -> bytes:
    """One PBLink message (without the PBNode field header)."""
    return _bytes_field(1, link.cid) + _bytes_field(2, link.name) + _int_field(3, link.tsize)


def encode_node(links: Sequence[PBLink], data: bytes | None) -> bytes:
    """A dag-pb block: the links as given (callers sort them), then Data when not None."""
    parts = [_bytes_field(2, encode_link(link)) for link in links]
    if data is not None:
        parts.append(_bytes_field(1, data))
    return b"".join(parts)


def encode_unixfs(value: UnixFSData) -> bytes:
    """A UnixFS Data message in field order (blocksizes unpacked, as proto2 writes them)."""
    parts = [_int_field(1, value.type)]
    if value.data is not None:
        parts.append(_bytes_field(2, value.data))
    if value.filesize is not None:
        parts.append(_int_field(3, value.filesize))
    parts.extend(_int_field(4, size) for size in value.blocksizes)
    if value.hash_type is not None:
        parts.append(_int_field(5, value.hash_type))
    if value.fanout is not None:
        parts.append(_int_field(6, value.fanout))
    if value.mode is not None:
        parts.append(_int_field(7, value.mode))
    return b"".join(parts)


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a protobuf message; ValueError when malformed."""
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated protobuf field")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise ValueError("truncated protobuf field")
            yield number, wire, buf[pos : pos + width]
            pos += width
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def decode_node(block: bytes) -> tuple[list[PBLink], bytes | None]:
    """Links and Data of a dag-pb block; ValueError when it is not one."""
    links: list[PBLink] = []
    data: bytes | None = None
    for number, wire, value in _fields(block):
        if number == 1 and wire == 2 and isinstance(value, bytes):
            data = value
        elif number == 2 and wire == 2 and isinstance(value, bytes):
            cid, name, tsize = None, b"", 0
            for lnum, lwire, lvalue in _fields(value):
                if lnum == 1 and lwire == 2 and isinstance(lvalue, bytes):
                    cid = lvalue
                elif lnum == 2 and lwire == 2 and isinstance(lvalue, bytes):
                    name = lvalue
                elif lnum == 3 and lwire == 0 and isinstance(lvalue, int):
                    tsize = lvalue
            if cid is None:
                raise ValueError("dag-pb link without a Hash")
            links.append(PBLink(cid, name, tsize))
        else:
            raise ValueError(f"unexpected dag-pb field {number}")
    return links, data


def decode_unixfs(buf: bytes) -> UnixFSData:
    """A UnixFS Data message; ValueError when malformed or without a Type."""
    kind: int | None = None
    data: bytes | None = None
    filesize = hash_type = fanout = mode = None
    blocksizes: list[int] = []
    for number, wire, value in _fields(buf):
        if wire == 0 and isinstance(value, int):
            if number == 1:
                kind = value
            elif number == 3:
                filesize = value
            elif number == 4:
                blocksizes.append(value)
            elif number == 5:
                hash_type = value
            elif number == 6:
                fanout = value
            elif number == 7:
                mode = value
        elif wire == 2 and isinstance(value, bytes):
            if number == 2:
                data = value
            elif number == 4:  # packed blocksizes, accepted when reading
                pos = 0
                while pos < len(value):
                    size, pos = read_varint(value, pos)
                    blocksizes.append(size)
    if kind is None:
        raise ValueError("UnixFS data without a Type")
    return UnixFSData(kind, data, filesize, tuple(blocksizes), hash_type, fanout, mode)
