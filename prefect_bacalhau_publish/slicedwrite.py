"""Write large buffers to files in 32 KiB slices: the page cache fills several times faster that way on
kernels that back big writes with large folios when free memory is handed back to a hypervisor.

Measured on this project's 2-core Firecracker VM (Linux 6.18, `page_reporting_order=11`), writing 1 GiB
into new files right after another 1 GiB was deleted: one `write` per 1 MiB took 7.2–12.0 s (6–8.6 s in the
kernel, copying into freshly faulted large folios), per 256 KiB 7.6 s, per 64 KiB 2.4 s, per 32 KiB 0.55 s,
per 16 KiB 0.74 s. Elsewhere the extra system calls cost about 30 ms per GiB.
"""

from __future__ import annotations

import os
from typing import BinaryIO

__all__ = ["SLICE", "write_sliced", "write_sliced_fd"]

SLICE = 32 * 1024
"""The largest write whose page-cache pages come from the per-CPU lists (order 3 on x86-64)."""


def write_sliced(out: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """`out.write(data)` in slices of at most SLICE bytes (a buffered `out` keeps writing each one in full)."""
    if len(data) <= SLICE:
        out.write(data)
        return
    view = memoryview(data).cast("B")
    for start in range(0, len(view), SLICE):
        out.write(view[start : start + SLICE])


def write_sliced_fd(fd: int, data: bytes | bytearray | memoryview) -> None:
    """`write_sliced` on a file descriptor: every byte written, SLICE bytes at most per `os.write`."""
    view = memoryview(data).cast("B")
    for start in range(0, len(view), SLICE):
        piece = view[start : start + SLICE]
        while piece:
            piece = piece[os.write(fd, piece) :]
