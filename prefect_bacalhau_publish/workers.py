"""Many small jobs from a few threads, each thread taking the next item itself.

A future per item (`pool.submit` for each) costs a queue hand-off, a condition variable and a wake-up per
item. Measured with 10 000 × 4 KiB plain uploads into obstore's in-memory store, one thread (2 cores,
2026-12-02): 2.4 s of CPU with a future per item, 1.1 s with the same work done in line; here each of
`threads` threads loops over one shared iterator, so an item costs one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .progress import submit

__all__ = ["for_each"]

T = TypeVar("T")
_END = object()


def for_each(items: Iterable[T], work: Callable[[T], None], *, threads: int, name: str) -> None:
    """Call `work(item)` for every item from `threads` threads (named `name-N`), each carrying the
    caller's context (`progress.submit`). `items` is consumed one item at a time as the threads ask, so a
    generator keeps memory flat. The first failure stops the rest (the other threads finish the item each
    is on) and is raised; so is an interrupt, once every thread has stopped."""
    pending = iter(items)
    taking = threading.Lock()
    failures: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                with taking:
                    item = next(pending, _END)
                if item is _END:
                    return
                work(item)  # type: ignore[arg-type]
        except BaseException as exc:
            failures.append(exc)
            stop.set()

    count = max(1, threads)
    with ThreadPoolExecutor(count, thread_name_prefix=name) as pool:
        try:
            for future in [submit(pool, worker) for _ in range(count)]:
                future.result()
        except BaseException:  # an interrupt: the threads stop after the item each is on
            stop.set()
            raise
    if failures:
        raise failures[0]
