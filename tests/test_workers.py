"""`workers.for_each`: every item once, the first failure stops the rest, the caller's context carried."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from prefect_bacalhau_publish.progress import advance, listening
from prefect_bacalhau_publish.workers import for_each


def test_every_item_is_worked_once_from_the_threads_asked_for() -> None:
    seen: list[int] = []
    names: set[str] = set()
    lock = threading.Lock()

    def work(item: int) -> None:
        with lock:
            seen.append(item)
            names.add(threading.current_thread().name)

    for_each(range(5000), work, threads=4, name="pbp-test")
    assert sorted(seen) == list(range(5000))
    assert names and all(name.startswith("pbp-test") for name in names)
    assert len(names) <= 4


def test_none_is_an_item_like_any_other() -> None:
    seen: list[object] = []
    for_each([None, 0, None], seen.append, threads=2, name="pbp-test")
    assert sorted(seen, key=repr) == [0, None, None]


def test_the_first_failure_is_raised_and_stops_the_rest() -> None:
    taken: list[int] = []
    lock = threading.Lock()

    def items() -> Iterator[int]:
        for n in range(10_000):
            with lock:
                taken.append(n)
            yield n

    def work(item: int) -> None:
        if item == 10:
            raise ValueError(f"item {item} is bad")

    with pytest.raises(ValueError, match="item 10 is bad"):
        for_each(items(), work, threads=3, name="pbp-test")
    # Each thread finishes the item it is on, then stops: far fewer than all 10 000 were taken.
    assert len(taken) < 100


def test_a_generator_is_consumed_as_the_threads_ask() -> None:
    ahead: list[int] = []
    done = 0
    lock = threading.Lock()

    def items() -> Iterator[int]:
        for n in range(2000):
            with lock:
                ahead.append(n - done)
            yield n

    def work(item: int) -> None:
        nonlocal done
        with lock:
            done += 1

    for_each(items(), work, threads=4, name="pbp-test")
    assert done == 2000
    assert max(ahead) <= 4  # never more items out than threads working on them


def test_progress_reaches_the_callers_listener_from_every_thread() -> None:
    moved: list[int] = []
    with listening(moved.append):
        for_each(range(100), lambda item: advance(item), threads=4, name="pbp-test")
    assert sorted(moved) == list(range(100))
