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
    assert extract_while_downloading(tmp_path / "dl", download, staging) == len(data)
    assert (staging / "stdout").read_text() == "hello\n"
    assert (staging / "outputs" / "big.bin").read_bytes() == (tmp_path / "src/outputs/big.bin").read_bytes()


def test_the_downloads_verdict_wins_over_the_extractions(tmp_path: Path) -> None:
    def download(out: BinaryIO) -> None:
        out.write(b"not a gzip stream at all" * 1000)
        raise ChecksumMismatchError("checksum mismatch for s3://b/k")

    with pytest.raises(ChecksumMismatchError, match="checksum mismatch"):
        extract_while_downloading(tmp_path / "dl", download, tmp_path / "staging")
    assert not (tmp_path / "staging").exists()


def test_a_bad_archive_that_downloaded_fine_is_refused(tmp_path: Path) -> None:
    def download(out: BinaryIO) -> None:
        out.write(b"not a gzip stream at all" * 1000)

    with pytest.raises(UnsafeArchiveError, match="not a gzip archive"):
        extract_while_downloading(tmp_path / "dl", download, tmp_path / "staging")
    assert not (tmp_path / "staging").exists()


def test_a_download_that_starts_over_is_extracted_from_the_finished_file(tmp_path: Path) -> None:
    data = make_archive(tmp_path)

    def download(out: BinaryIO) -> None:
        out.write(data[: 2 << 20])  # past the reader's step: the extraction has begun
        out.seek(0)
        out.truncate()  # the server sent the whole file again
        for piece in pieces(data, 65536):
            out.write(piece)

    staging = tmp_path / "staging"
    extract_while_downloading(tmp_path / "dl", download, staging)
    assert (staging / "outputs" / "big.bin").read_bytes() == (tmp_path / "src/outputs/big.bin").read_bytes()
