"""Helpers shared by the fault-injection tests: hold a transfer at a byte count, run it in a thread."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect_bacalhau_publish import progress

BOUND = 120.0  # seconds any single wait may take
MiB = 1024 * 1024


class Gate:
    """A progress listener that holds the transferring thread once `threshold` bytes have moved, until
    the test opens the gate; it also counts every byte reported."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.moved = 0
        self.reached = threading.Event()
        self.opened = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            self.moved += nbytes
            hold = self.moved >= self.threshold and not self.reached.is_set()
            if hold:
                self.reached.set()
        if hold:
            self.opened.wait(BOUND)


@contextmanager
def in_thread(work: Callable[[], Any]) -> Iterator[tuple[threading.Thread, list[Any], list[BaseException]]]:
    """Run `work` in a thread (in this context: progress listeners entered before hear it); yields
    (thread, results, errors) and joins it (bounded) on exit."""
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:
            errors.append(exc)

    worker = progress.thread(run, "transfer-under-test")
    worker.start()
    try:
        yield worker, results, errors
    finally:
        worker.join(BOUND)


def digest_tree(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 hex of each file ('dir' for folders), read in chunks."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            out[rel] = "dir"
        else:
            sha = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(4 * MiB):
                    sha.update(chunk)
            out[rel] = sha.hexdigest()
    return out
