"""S3's ChecksumSHA256 forms, computed while bytes stream: plain (one PUT) and composite (multipart, `-N`)."""

from __future__ import annotations

import base64
import hashlib

MiB = 1024 * 1024


def b64(digest: bytes) -> str:
    """Base64, as S3 writes checksums."""
    return base64.b64encode(digest).decode()


def composite(digests: list[bytes]) -> str:
    """S3's multipart checksum form: the base64 SHA-256 of the parts' SHA-256 digests, then `-N`."""
    return f"{b64(hashlib.sha256(b''.join(digests)).digest())}-{len(digests)}"


def is_composite(checksum: str) -> bool:
    """True for S3's multipart form `<base64>-<parts>`."""
    head, dash, parts = checksum.rpartition("-")
    return bool(dash and head and parts.isdigit())


class PartHasher:
    """Hashes a byte stream whole and in parts of `part_size` bytes, for either checksum form."""

    def __init__(self, part_size: int, *, whole: bool = True) -> None:
        self.part_size = part_size
        self.size = 0
        self._whole = hashlib.sha256() if whole else None
        self._part = hashlib.sha256()
        self._fill = 0
        self._digests: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes."""
        view = memoryview(data)
        if self._whole is not None:
            self._whole.update(view)
        self.size += len(view)
        while len(view):
            take = min(len(view), self.part_size - self._fill)
            self._part.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == self.part_size:
                self._digests.append(self._part.digest())
                self._part, self._fill = hashlib.sha256(), 0

    def checksum(self, multipart: bool) -> str:
        """The SHA-256 of the bytes (single PUT), or the composite of the parts' digests with `-N`."""
        if not multipart:
            if self._whole is None:
                raise ValueError("this hasher was made without the whole-stream hash")
            return b64(self._whole.digest())
        return composite(self._digests + ([self._part.digest()] if self._fill else []))


def part_size_candidates(total: int, parts: int) -> list[int]:
    """Whole-MiB part sizes that split `total` bytes into exactly `parts` parts, as SDKs choose them."""
    if parts <= 1:
        return [max(total, 1)]
    low = -(-total // parts)  # n parts of p bytes must hold the total
    high = (total - 1) // (parts - 1)  # and n-1 parts must not
    first = -(-max(low, 5 * MiB) // MiB)
    return [mib * MiB for mib in range(first, high // MiB + 1)][:64]


class ChecksumVerifier:
    """Checks bytes against an S3 ChecksumSHA256 (either form) as they pass, in one pass: for the composite
    form, every part size an SDK could have used for `total` bytes (which must then be known) is hashed
    side by side."""

    def __init__(self, checksum: str, total: int | None) -> None:
        self.checksum = checksum
        self._whole = None if is_composite(checksum) else hashlib.sha256()
        self._hashers: list[PartHasher] = []
        if self._whole is None:
            if total is None:
                raise ValueError("a composite checksum can only be checked when the total size is known")
            parts = int(checksum.rpartition("-")[2])
            self._hashers = [PartHasher(size, whole=False) for size in part_size_candidates(total, parts)]

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes."""
        if self._whole is not None:
            self._whole.update(data)
        for hasher in self._hashers:
            hasher.update(data)

    def matches(self) -> bool:
        """True when the bytes fed have the checksum (under one of the candidate part sizes)."""
        if self._whole is not None:
            return b64(self._whole.digest()) == self.checksum
        return any(hasher.checksum(True) == self.checksum for hasher in self._hashers)
