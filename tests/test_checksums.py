"""S3 checksum forms computed locally (pure logic; the MinIO tests check them against a real store)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from prefect_bacalhau_publish.checksums import (
    ChecksumVerifier,
    MiB,
    PartHasher,
    is_composite,
    part_size_candidates,
)


def file_matches(path: Path, checksum: str) -> bool:
    """The file's bytes fed to ChecksumVerifier in 1 MiB reads, as a download feeds it."""
    verifier = ChecksumVerifier(checksum, path.stat().st_size)
    with open(path, "rb") as handle:
        while chunk := handle.read(MiB):
            verifier.update(chunk)
    return verifier.matches()


def test_plain_and_composite_forms(tmp_path: Path) -> None:
    data = os.urandom(11 * MiB + 123)
    hasher = PartHasher(5 * MiB)
    for start in range(0, len(data), 777_777):  # chunk boundaries unrelated to part boundaries
        hasher.update(data[start : start + 777_777])
    assert hasher.checksum(False) == base64.b64encode(hashlib.sha256(data).digest()).decode()
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    combined = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    composite = hasher.checksum(True)
    assert composite == base64.b64encode(combined).decode() + "-3"
    assert is_composite(composite) and not is_composite(hasher.checksum(False))
    path = tmp_path / "f"
    path.write_bytes(data)
    assert file_matches(path, composite) and file_matches(path, hasher.checksum(False))
    assert not file_matches(path, composite.replace("-3", "-2"))
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert not file_matches(path, composite)


def test_part_size_candidates() -> None:
    assert part_size_candidates(12 * MiB, 3) == [5 * MiB]
    assert part_size_candidates(16 * MiB, 2) == [
        8 * MiB,
        9 * MiB,
        10 * MiB,
        11 * MiB,
        12 * MiB,
        13 * MiB,
        14 * MiB,
        15 * MiB,
    ]
    assert part_size_candidates(100 * MiB + 1, 7) == [15 * MiB, 16 * MiB]
    assert all(((100 * MiB + 1) + p - 1) // p == 7 for p in part_size_candidates(100 * MiB + 1, 7))


def test_verifier_checks_a_stream_in_one_pass_for_every_candidate_part_size() -> None:
    data = os.urandom(16 * MiB)
    part = 11 * MiB  # one of the 8 part sizes that cut 16 MiB into 2 parts
    digests = hashlib.sha256(data[:part]).digest() + hashlib.sha256(data[part:]).digest()
    checksum = base64.b64encode(hashlib.sha256(digests).digest()).decode() + "-2"
    for payload, expected in ((data, True), (data[:-1] + bytes([data[-1] ^ 1]), False)):
        verifier = ChecksumVerifier(checksum, len(payload))
        for start in range(0, len(payload), 999_999):
            verifier.update(payload[start : start + 999_999])
        assert verifier.matches() is expected
    plain = ChecksumVerifier(base64.b64encode(hashlib.sha256(data).digest()).decode(), len(data))
    plain.update(data)
    assert plain.matches()
