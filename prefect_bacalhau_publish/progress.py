"""Byte counts from long transfers, for whoever shows progress (the CLI's Rich bars); silent by default."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[int], None]

_lock = threading.Lock()
_listeners: list[Listener] = []


def advance(nbytes: int) -> None:
    """Report `nbytes` more bytes moved (called from transfer loops, any thread)."""
    if _listeners:
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(nbytes)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call `listener(nbytes)` for every transfer in this process while the block runs."""
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)
