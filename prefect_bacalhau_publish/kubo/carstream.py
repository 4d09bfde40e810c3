"""A CAR read as it streams, for a DAG walked in the same depth-first order (`order=dfs; dups=y`).

A trustless gateway asked for `application/vnd.ipld.car; order=dfs; dups=y` sends every block of the DAG in
the order a depth-first walk of its links meets them, repeats included. `OrderedCar.get(cid)` hands out the
next block and refuses one that is not the block asked for, so the walker (`export_dag`) needs nothing
stored: no spool on disk, memory bounded by the read-ahead queue. A background thread reads the stream and
checks each block's hash (hashlib releases the GIL) while the caller writes files, so reading, hashing and
writing overlap.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import BinaryIO

from ..errors import FetchError
from ..progress import thread
from .car import read_header, read_section
from .cid import CID, IDENTITY

__all__ = ["OrderedCar"]

_AHEAD = 8
"""Blocks read ahead of the walker (1 MiB each in the default profiles; at most 8 × 8 MiB, the largest
section a CAR may hold here)."""
_END = object()


def _ignore(nbytes: int) -> None:
    pass


class OrderedCar:
    """The verified blocks of a CAR stream, handed out in stream order to a walker asking in the same order."""

    def __init__(self, handle: BinaryIO, source: str, moved: Callable[[int], None] = _ignore) -> None:
        self.source = source
        self._moved = moved
        self.roots = read_header(handle)
        self._handle = handle
        self._queue: queue.Queue[object] = queue.Queue(_AHEAD)
        self._closed = threading.Event()
        self._next: tuple[CID, memoryview] | None = None
        self._done = False
        self._reader = thread(self._pump, name="car-stream")
        self._reader.start()

    def _pump(self) -> None:
        try:
            while not self._closed.is_set():
                section = read_section(self._handle)
                if section is None:
                    break
                cid, start, body = section
                self._put((cid, memoryview(body)[start:]))
            self._put(_END)
        except BaseException as exc:  # handed to the walker, which raises it
            self._put(exc)

    def _put(self, item: object) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)  # wakes up to see close() while the walker is gone
                return
            except queue.Full:
                continue

    def _peek(self) -> tuple[CID, memoryview] | None:
        if self._next is None and not self._done:
            item = self._queue.get()
            if item is _END:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._next = item  # type: ignore[assignment]
        return self._next

    def get(self, cid: CID) -> memoryview | bytes | None:
        """The block for `cid`, which must be the next in the stream; None when the stream has ended."""
        head = self._peek()
        if cid.hash_code == IDENTITY:  # its data is in the CID; a stream may or may not carry it
            if head is not None and head[0].multihash == cid.multihash:
                self._next = None
            return cid.digest
        if head is None:
            return None
        got, block = head
        if got.multihash != cid.multihash:
            raise FetchError(
                f"the CAR stream from {self.source} does not follow the DAG depth-first: "
                f"block {cid} was due, {got} came"
            )
        self._next = None
        self._moved(len(block))
        return block

    def close(self) -> None:
        """Stop the reader thread (the caller closes the stream itself)."""
        self._closed.set()

    def __enter__(self) -> OrderedCar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
