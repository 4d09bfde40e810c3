"""CIDs, multihashes and varints: just enough of multiformats for UnixFS DAGs and CAR files."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CID", "DAG_PB", "RAW", "SHA2_256", "encode_varint", "read_varint", "sha256_cid"]

DAG_PB = 0x70
RAW = 0x55
SHA2_256 = 0x12
IDENTITY = 0x00

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}

_HASHES: dict[int, Callable[[bytes | memoryview], bytes]] = {
    SHA2_256: lambda data: hashlib.sha256(data).digest(),
    0x13: lambda data: hashlib.sha512(data).digest(),
    0x16: lambda data: hashlib.sha3_256(data).digest(),
    0x14: lambda data: hashlib.sha3_512(data).digest(),
    0xB220: lambda data: hashlib.blake2b(data, digest_size=32).digest(),
}


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128, as multiformats and protobuf use it."""
    if value < 0:
        raise ValueError("varint must not be negative")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(buf: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode an unsigned varint at `pos`; returns (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58."""
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rem = divmod(number, 58)
        out = _B58[rem] + out
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + out


def b58decode(text: str) -> bytes:
    """Inverse of `b58encode`; ValueError on a character outside the alphabet."""
    number = 0
    for char in text:
        if char not in _B58_INDEX:
            raise ValueError(f"invalid base58 character {char!r}")
        number = number * 58 + _B58_INDEX[char]
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + body


@dataclass(frozen=True, slots=True)
class CID:
    """A content identifier: version, codec and multihash (code + digest)."""

    version: int
    codec: int
    hash_code: int
    digest: bytes

    @property
    def multihash(self) -> bytes:
        """The multihash bytes: code, length, digest."""
        return encode_varint(self.hash_code) + encode_varint(len(self.digest)) + self.digest

    def __bytes__(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def __str__(self) -> str:
        if self.version == 0:
            return b58encode(self.multihash)
        return "b" + base64.b32encode(bytes(self)).decode().lower().rstrip("=")

    def verify(self, block: bytes | memoryview) -> bool:
        """True when `block` hashes to this CID's digest; ValueError for an unsupported hash function."""
        if self.hash_code == IDENTITY:
            return block == self.digest
        hasher = _HASHES.get(self.hash_code)
        if hasher is None:
            raise ValueError(f"unsupported multihash function 0x{self.hash_code:x} in {self}")
        return hasher(block)[: len(self.digest)] == self.digest

    @classmethod
    def decode(cls, buf: bytes | memoryview, pos: int = 0) -> tuple[CID, int]:
        """Read a binary CID at `pos`; returns (cid, position after it)."""
        if len(buf) - pos >= 2 and buf[pos] == SHA2_256 and buf[pos + 1] == 32:
            digest = bytes(buf[pos + 2 : pos + 34])
            if len(digest) != 32:
                raise ValueError("truncated CIDv0")
            return cls(0, DAG_PB, SHA2_256, digest), pos + 34
        version, pos = read_varint(buf, pos)
        if version != 1:
            raise ValueError(f"unsupported CID version {version}")
        codec, pos = read_varint(buf, pos)
        code, pos = read_varint(buf, pos)
        length, pos = read_varint(buf, pos)
        digest = bytes(buf[pos : pos + length])
        if len(digest) != length:
            raise ValueError("truncated CID digest")
        return cls(1, codec, code, digest), pos + length

    @classmethod
    def from_bytes(cls, data: bytes) -> CID:
        """A CID from exactly its binary form."""
        cid, end = cls.decode(data)
        if end != len(data):
            raise ValueError("trailing bytes after CID")
        return cid

    @classmethod
    def parse(cls, text: str) -> CID:
        """A CID from its string form (CIDv0 base58, or CIDv1 in base32, base58btc or base16)."""
        text = text.strip()
        try:
            if len(text) == 46 and text.startswith("Qm"):
                return cls.from_bytes(b58decode(text))
            prefix, body = text[:1], text[1:]
            if prefix in ("b", "B"):
                raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
            elif prefix == "z":
                raw = b58decode(body)
            elif prefix in ("f", "F"):
                raw = bytes.fromhex(body)
            else:
                raise ValueError(f"unsupported multibase prefix {prefix!r}")
            return cls.from_bytes(raw)
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"not a valid CID: {text!r} ({exc})") from None


def sha256_cid(block: bytes | memoryview, codec: int, version: int) -> bytes:
    """Binary CID of `block` hashed with sha2-256 (raw blocks are always CIDv1, as Kubo makes them)."""
    digest = hashlib.sha256(block).digest()
    if version == 0 and codec == DAG_PB:
        return b"\x12\x20" + digest
    return b"\x01" + encode_varint(codec) + b"\x12\x20" + digest
