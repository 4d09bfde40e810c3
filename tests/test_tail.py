"""Extraction overlapping a download (sources/tail.py); the real-server paths run in test_s3/test_local."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from prefect_bacalhau_publish.archive import write_archive
from prefect_bacalhau_publish.errors import ChecksumMismatchError, UnsafeArchiveError
from prefect_bacalhau_publish.sources.tail import extract_while_downloading


def make_archive(tmp_path: Path) -> bytes:
    root = tmp_path / "src"
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "stdout").write_text("hello\n")
    out = io.BytesIO()
    write_archive(root, out)
    return out.getvalue()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_extracts_while_the_bytes_arrive(tmp_path: Path) -> None:
    data = make_archive(tmp_path)

    def download(out: BinaryIO) -> int:
        for piece in pieces(data, 100_003):
            out.write(piece)
        return len(data)

    staging = tmp_path / "staging"
    assert extract_while_downloading(download, staging) == len(data)
    assert (staging / "stdout").read_text() == "hello\n"
    assert (staging / "outputs" / "big.bin").read_bytes() == (tmp_path / "src/outputs/big.bin").read_bytes()


def test_the_downloads_verdict_wins_over_the_extractions(tmp_path: Path) -> None:
    def download(out: BinaryIO) -> None:
        out.write(b"not a gzip stream at all" * 1000)
        raise ChecksumMismatchError("checksum mismatch for s3://b/k")

    with pytest.raises(ChecksumMismatchError, match="checksum mismatch"):
        extract_while_downloading(download, tmp_path / "staging")
    assert not (tmp_path / "staging").exists()


def test_a_bad_archive_that_downloaded_fine_is_refused(tmp_path: Path) -> None:
    def download(out: BinaryIO) -> None:
        out.write(b"not a gzip stream at all" * 1000)

    with pytest.raises(UnsafeArchiveError, match="not a gzip archive"):
        extract_while_downloading(download, tmp_path / "staging")
    assert not (tmp_path / "staging").exists()


def test_a_download_that_starts_over_is_extracted_from_the_new_bytes(tmp_path: Path) -> None:
    data = make_archive(tmp_path)

    def download(out: BinaryIO) -> None:
        out.write(data[: 2 << 20])  # past the reader's step: the extraction has begun
        out.seek(0)
        out.truncate()  # the server sent the whole file again
        for piece in pieces(data, 65536):
            out.write(piece)

    staging = tmp_path / "staging"
    extract_while_downloading(download, staging)
    assert (staging / "outputs" / "big.bin").read_bytes() == (tmp_path / "src/outputs/big.bin").read_bytes()


def test_a_restart_after_the_extraction_finished_extracts_again(tmp_path: Path) -> None:
    """The first attempt's bytes were a whole archive, then the server sent another one: the second counts."""
    first = make_archive(tmp_path)
    (tmp_path / "src" / "stdout").write_text("second\n")
    second = io.BytesIO()
    write_archive(tmp_path / "src", second)

    def download(out: BinaryIO) -> None:
        out.write(first)
        out.write(b"\0" * 1024)  # the reader waits for the end of this attempt, past the archive's end
        while not (tmp_path / "staging").exists():
            pass  # the first archive is extracted; the reader now waits for this attempt to end
        out.seek(0)
        out.truncate()
        out.write(second.getvalue())

    staging = tmp_path / "staging"
    extract_while_downloading(download, staging)
    assert (staging / "stdout").read_text() == "second\n"


def test_memory_stays_bounded_while_the_extraction_lags(tmp_path: Path) -> None:
    """The download waits when it is `_BUFFERED` bytes ahead instead of holding the whole archive."""
    from prefect_bacalhau_publish.sources import tail

    data = make_archive(tmp_path)
    peak = 0

    def download(out: BinaryIO) -> None:
        nonlocal peak
        pipe = out._pipe  # type: ignore[attr-defined]
        for piece in pieces(data, 4096):
            out.write(piece)
            peak = max(peak, pipe.buffered)

    original = tail._BUFFERED
    tail._BUFFERED = 64 * 1024
    try:
        extract_while_downloading(download, tmp_path / "staging")
    finally:
        tail._BUFFERED = original
    assert 0 < peak <= 64 * 1024 + 4096 < len(data)
    assert (tmp_path / "staging" / "stdout").read_text() == "hello\n"


def test_an_extraction_failure_lets_the_download_finish_without_holding_its_bytes(tmp_path: Path) -> None:
    sent = 0

    def download(out: BinaryIO) -> int:
        nonlocal sent
        for _ in range(200):  # 200 MiB: far more than the pipe holds
            out.write(b"x" * (1 << 20))
            sent += 1 << 20
        return sent

    with pytest.raises(UnsafeArchiveError, match="not a gzip archive"):
        extract_while_downloading(download, tmp_path / "staging")
    assert sent == 200 << 20  # it ran to its end (its verdict would have won)
