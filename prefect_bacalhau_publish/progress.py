"""Byte counts from transfers, for whoever watches them (the CLI's Rich bar, `transfer.metered`).

Watchers are scoped per context (a `ContextVar`), so transfers running at once in different tasks never mix.
Transfer loops call `advance(nbytes)` and, when they learn the total, `expect(total_bytes)`; both are silent
when nobody listens. A thread started for a transfer must carry its starter's context: start it with
`thread()` or submit to a pool with `submit()` (one context copy per call: a context cannot be entered by
two threads at once).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import NamedTuple, ParamSpec, TypeVar

__all__ = ["Listener", "advance", "expect", "listening", "submit", "thread"]

Listener = Callable[[int], None]
P = ParamSpec("P")
T = TypeVar("T")


class _Watcher(NamedTuple):
    moved: Listener
    expected: Listener | None


_watchers: contextvars.ContextVar[tuple[_Watcher, ...]] = contextvars.ContextVar(
    "pbp_progress_watchers", default=()
)


def advance(nbytes: int) -> None:
    """Report `nbytes` more bytes moved by the transfer running in this context."""
    for watcher in _watchers.get():
        watcher.moved(nbytes)


def expect(total_bytes: int) -> None:
    """Announce how many bytes the transfer running in this context will move in all."""
    for watcher in _watchers.get():
        if watcher.expected is not None:
            watcher.expected(total_bytes)


@contextmanager
def listening(listener: Listener, *, expected: Listener | None = None) -> Iterator[None]:
    """Call `listener(nbytes)` (and `expected(total)`) for the transfers of this context while the block runs."""
    token = _watchers.set((*_watchers.get(), _Watcher(listener, expected)))
    try:
        yield
    finally:
        _watchers.reset(token)


def thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread (not started) that runs `target` in a copy of the caller's context."""
    return threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)


def submit(pool: Executor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """`pool.submit(fn, ...)` run in a copy of the caller's context."""
    context = contextvars.copy_context()
    return pool.submit(lambda: context.run(fn, *args, **kwargs))
