"""write_sliced: every byte written, in order, no write larger than SLICE (pure logic, plus a real file)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from prefect_bacalhau_publish.slicedwrite import SLICE, write_sliced


class Recorder(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sizes.append(len(data))
        return super().write(data)


@pytest.mark.parametrize("size", [0, 1, SLICE - 1, SLICE, SLICE + 1, 5 * SLICE + 7, 2**20])
def test_every_byte_in_slices(size: int) -> None:
    data = os.urandom(size)
    out = Recorder()
    write_sliced(out, memoryview(data))
    assert out.getvalue() == data
    assert all(n <= SLICE for n in out.sizes)
    assert len(out.sizes) == max(1, -(-size // SLICE))


def test_a_real_file_gets_it_all(tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 5)
    with open(tmp_path / "f", "xb") as out:
        write_sliced(out, data)
        write_sliced(out, bytearray(b"tail"))
    assert (tmp_path / "f").read_bytes() == data + b"tail"
