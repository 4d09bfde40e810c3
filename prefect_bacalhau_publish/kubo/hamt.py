"""HAMT-sharded UnixFS directories, built exactly as boxo's `hamt.Shard` builds them.

Each entry lands in slot `murmur3_64(name)` bits (MSB first, log2(fanout) bits per level); a slot holding one
entry links to it as `<slot in uppercase hex><name>`, a slot holding several links (named `<slot>`) to a
child shard of the next level. Shard data: type HAMTShard, the slot bitfield (big-endian, leading zero
bytes dropped), hash type murmur3 (0x22), the fanout and, on the root shard only, the folder's mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .cid import DAG_PB, sha256_cid
from .dagpb import HAMT_SHARD, PBLink, UnixFSData, encode_node, encode_unixfs

__all__ = ["MURMUR3", "build_hamt", "murmur3_64"]

MURMUR3 = 0x22
_MASK64 = (1 << 64) - 1


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK64
    return k ^ (k >> 33)


def murmur3_64(data: bytes) -> int:
    """The first 64 bits (h1) of MurmurHash3 x64 128 with seed 0, the HAMT's hash of a name."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F
    h1 = h2 = 0
    blocks = len(data) // 16
    for i in range(blocks):
        k1 = int.from_bytes(data[16 * i : 16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8 : 16 * i + 16], "little")
        h1 ^= (_rotl((k1 * c1) & _MASK64, 31) * c2) & _MASK64
        h1 = (_rotl(h1, 27) + h2) & _MASK64
        h1 = (h1 * 5 + 0x52DCE729) & _MASK64
        h2 ^= (_rotl((k2 * c2) & _MASK64, 33) * c1) & _MASK64
        h2 = (_rotl(h2, 31) + h1) & _MASK64
        h2 = (h2 * 5 + 0x38495AB5) & _MASK64
    tail = data[16 * blocks :]
    if len(tail) > 8:
        h2 ^= (_rotl((int.from_bytes(tail[8:], "little") * c2) & _MASK64, 33) * c1) & _MASK64
    if tail:
        h1 ^= (_rotl((int.from_bytes(tail[:8], "little") * c1) & _MASK64, 31) * c2) & _MASK64
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & _MASK64
    h2 = (h2 + h1) & _MASK64
    h1, h2 = _fmix(h1), _fmix(h2)
    return (h1 + h2) & _MASK64


def build_hamt(
    links: Sequence[PBLink],
    fanout: int,
    cid_version: int,
    emit: Callable[[bytes, bytes], None] | None = None,
    mode: int | None = None,
) -> tuple[bytes, int]:
    """Shard a directory's links; returns the root shard's (binary CID, Tsize) and emits every shard.

    `mode` (the folder's UnixFS mode) goes into the root shard only, as boxo writes it.
    """
    bits = fanout.bit_length() - 1
    pad = len(f"{fanout - 1:X}")

    def shard(items: list[tuple[int, PBLink]], depth: int) -> tuple[bytes, int]:
        shift = 64 - (depth + 1) * bits
        if shift < 0:
            raise ValueError("sharded directory too deep: two names share a murmur3 hash")
        buckets: dict[int, list[tuple[int, PBLink]]] = {}
        for item in items:
            buckets.setdefault((item[0] >> shift) & (fanout - 1), []).append(item)
        out: list[PBLink] = []
        bitfield = 0
        for index in sorted(buckets):
            bitfield |= 1 << index
            prefix = f"{index:0{pad}X}".encode()
            group = buckets[index]
            if len(group) == 1:
                link = group[0][1]
                out.append(PBLink(link.cid, prefix + link.name, link.tsize))
            else:
                child_cid, child_size = shard(group, depth + 1)
                out.append(PBLink(child_cid, prefix, child_size))
        field = bitfield.to_bytes(fanout // 8, "big").lstrip(b"\0")
        data = UnixFSData(
            HAMT_SHARD, field, hash_type=MURMUR3, fanout=fanout, mode=mode if depth == 0 else None
        )
        block = encode_node(out, encode_unixfs(data))
        cid = sha256_cid(block, DAG_PB, cid_version)
        if emit is not None:
            emit(cid, block)
        return cid, len(block) + sum(link.tsize for link in out)

    return shard([(murmur3_64(link.name), link) for link in links], 0)
