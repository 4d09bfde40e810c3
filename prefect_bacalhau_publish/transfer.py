"""Meters one publish or fetch: a Prefect progress artifact while a long one runs, one log line when it ends.

`metered()` wraps every transfer (`publish_to`, `fetch_source`). It listens to the transfer's bytes
(`progress.advance`) and its total (given up front, or announced by the fetcher with `progress.expect`).
Inside a Prefect flow or task run, a transfer whose total is at least `THRESHOLD` bytes gets a progress
artifact on that run, described by what moves where: created when the total is known, updated at most once
per `INTERVAL` seconds from the thread that moved the bytes, and at the end set to 100 with the summary line
as its description. A failed transfer keeps its last percentage and its description says where it stopped
(`... failed at 42% (29.4 MiB of 70.0 MiB)`). A transfer whose total stays unknown gets no artifact.

Every successful transfer logs one summary line to the run's logger (outside a run, to the
`prefect_bacalhau_publish` logger): `published 3 files, 70.0 MiB in 1.2 s (58.3 MiB/s) to s3://b/k.tar.gz`.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from .progress import expect, listening

__all__ = [
    "INTERVAL",
    "THRESHOLD",
    "Board",
    "Meter",
    "Transfer",
    "human_bytes",
    "location",
    "metered",
    "tree_size",
]

THRESHOLD = 64 * 1024 * 1024
"""Transfers of at least this many bytes (when known) get a progress artifact."""

INTERVAL = 1.0
"""Seconds between two updates of a progress artifact, at least."""

_MIB = 1024 * 1024
logger = logging.getLogger("prefect_bacalhau_publish")


class Board(Protocol):
    """Where progress shows: Prefect's progress artifacts, or a fake in tests."""

    def create(self, progress: float, description: str) -> Any: ...

    def update(self, artifact_id: Any, progress: float, description: str | None = None) -> None: ...


class PrefectBoard:
    """Progress artifacts of the current flow or task run (sync calls: they work in any worker thread)."""

    def create(self, progress: float, description: str) -> Any:
        from prefect.artifacts import create_progress_artifact

        return create_progress_artifact(progress, description=description, _sync=True)  # type: ignore[call-arg]

    def update(self, artifact_id: Any, progress: float, description: str | None = None) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(artifact_id, progress, description=description, _sync=True)  # type: ignore[call-arg]


def in_run() -> bool:
    """True inside a Prefect flow or task run (never imports Prefect: without it there is no run)."""
    context = sys.modules.get("prefect.context")
    if context is None:
        return False
    try:
        context.get_run_context()
    except context.MissingContextError:
        return False
    return True


def _run_logger() -> Any:
    if in_run():
        from prefect import get_run_logger

        return get_run_logger()
    return logger


def human_bytes(n: int) -> str:
    """`512 B`, `4.0 KiB`, `70.0 MiB`, `1.02 GiB`."""
    if n < 1024:
        return f"{n} B"
    if n < _MIB:
        return f"{n / 1024:.1f} KiB"
    if n < 1024 * _MIB:
        return f"{n / _MIB:.1f} MiB"
    return f"{n / (1024 * _MIB):.2f} GiB"


def location(params: object) -> str:
    """How logs name a result or input: `s3://bucket/key`, `ipfs://CID`, the URL (without credentials or
    query), the local path."""
    from .specs import InlineParams, IPFSParams, LocalParams, S3Params, S3PreSignedParams, URLParams

    if isinstance(params, S3PreSignedParams) and not params.bucket:  # a managed result: only the URL's host
        url = urlsplit(params.pre_signed_url)
        return f"presigned {url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}"
    if isinstance(params, S3Params):  # also s3PreSigned: its URL carries a signature, never shown
        return f"s3://{params.bucket}/{params.key}"
    if isinstance(params, InlineParams):
        return f"inline data ({len(params.url)} characters)"
    if isinstance(params, IPFSParams):
        return f"ipfs://{params.cid}"
    if isinstance(params, URLParams):
        url = urlsplit(params.url)
        host = url.netloc.rpartition("@")[2]
        return urlunsplit((url.scheme, host, url.path, "…" if url.query else "", ""))
    if isinstance(params, LocalParams):
        return params.source_path
    return type(params).__name__


def tree_size(path: Path) -> tuple[int, int]:
    """Regular files at or under `path` and their bytes; links under `path` are neither followed nor counted,
    nor is what cannot be read (the transfer itself reports that)."""
    try:
        top = os.stat(path)
    except OSError:
        return 0, 0
    if stat.S_ISREG(top.st_mode):
        return 1, top.st_size
    files = size = 0
    pending = [os.fspath(path)] if stat.S_ISDIR(top.st_mode) else []
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        files += 1
                        size += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return files, size


class Meter:
    """The byte count of one transfer, and its progress artifact on `board` (None: no artifact).

    `advance` and `expect` may be called from any thread. Artifact calls run in the calling thread, one at a
    time, updates at most once per `interval` of `clock`. A board that fails is dropped with one warning:
    showing progress never fails a transfer.
    """

    def __init__(
        self,
        label: Callable[[int], str],
        *,
        board: Board | None,
        threshold: int = THRESHOLD,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.moved = 0
        self.total: int | None = None
        self.artifact: Any = None
        self._label = label
        self._board = board
        self._threshold = threshold
        self._interval = interval
        self._clock = clock
        self._lock = threading.Condition()
        self._busy = False
        self._ended = False
        self._last = 0.0

    def expect(self, total: int) -> None:
        """The transfer moves `total` bytes in all; creates the artifact when that reaches the threshold."""
        with self._lock:
            self.total = total
            if self._ended or self._busy or self.artifact is not None or total < self._threshold:
                return
            self._busy = True
            self._last = self._clock()
            percent = self._percent()
        self._call(self._create, percent)

    def advance(self, nbytes: int) -> None:
        """`nbytes` more moved; updates the artifact once `interval` has passed since the last call to it."""
        with self._lock:
            self.moved += nbytes
            if self.artifact is None or self._busy or self._ended:
                return
            now = self._clock()
            if now - self._last < self._interval:
                return
            self._busy = True
            self._last = now
            percent = self._percent()
        self._call(self._update, percent)

    def end(self, description: str, *, failed: bool = False) -> None:
        """The last update: 100 (or, `failed`, the percentage reached) with `description`."""
        with self._lock:
            self._ended = True
            while self._busy:  # an update still on its way must not land after this one
                self._lock.wait()
            percent = self._percent() if failed else 100.0
        if self.artifact is not None:
            self._call(self._update, percent, description)

    @property
    def percent(self) -> float:
        """How far the transfer got, in percent of the total (at most 99 before it ends; 0 if unknown)."""
        with self._lock:
            return self._percent()

    def _percent(self) -> float:
        if not self.total:
            return 0.0
        return float(min(99, math.floor(100 * self.moved / self.total)))

    def _create(self, board: Board, percent: float, description: str | None = None) -> None:
        assert self.total is not None
        self.artifact = board.create(percent, description or self._label(self.total))

    def _update(self, board: Board, percent: float, description: str | None = None) -> None:
        board.update(self.artifact, percent, description)

    def _call(
        self,
        action: Callable[[Board, float, str | None], None],
        percent: float,
        description: str | None = None,
    ) -> None:
        board = self._board
        try:
            if board is not None:
                action(board, percent, description)
        except Exception as exc:  # the Prefect API is down or refuses: keep transferring
            self._board = None
            logger.warning("progress artifact dropped: %s: %s", type(exc).__name__, exc)
        finally:
            with self._lock:
                self._busy = False
                self._lock.notify_all()


class Transfer:
    """The transfer `metered` runs: the caller sets `target`, `files` and `nbytes` for the summary line."""

    def __init__(self, verb: str, preposition: str, target: str, meter: Meter) -> None:
        self.meter = meter
        self.verb = verb
        self.preposition = preposition
        self.target = target
        self.files = 0
        self.nbytes: int | None = None  # None: the bytes the meter counted

    def label(self, total: int) -> str:
        """The artifact's description while running: `publishing 70.0 MiB to s3://bucket/key.tar.gz`."""
        doing = {"published": "publishing", "fetched": "fetching"}.get(self.verb, self.verb)
        return f"{doing} {human_bytes(total)} {self.preposition} {self.target}"

    def summary(self, seconds: float) -> str:
        """`published 3 files, 70.0 MiB in 1.2 s (58.3 MiB/s) to s3://bucket/key.tar.gz`."""
        nbytes = self.meter.moved if self.nbytes is None else self.nbytes
        files = f"{self.files:,} file{'' if self.files == 1 else 's'}"
        speed = nbytes / _MIB / seconds if seconds > 0 else 0.0
        took = f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2f}"
        return (
            f"{self.verb} {files}, {human_bytes(nbytes)} in {took} s ({speed:.1f} MiB/s) "
            f"{self.preposition} {self.target}"
        )


@contextmanager
def metered(
    verb: str, preposition: str, target: str, *, total: int | None = None, board: Board | None = None
) -> Iterator[Transfer]:
    """Meter the transfer the block runs: `verb` is `published` or `fetched`, `preposition` `to` or `from`.

    Listens to `progress.advance`/`expect` in this context; `total` is the byte count when known up front.
    The summary line is logged when the block ends without an error. `board` defaults to Prefect's progress
    artifacts inside a flow or task run, and to none outside one.
    """
    if board is None and in_run():
        board = PrefectBoard()
    meter = Meter(lambda total: transfer.label(total), board=board)
    transfer = Transfer(verb, preposition, target, meter)
    started = time.perf_counter()
    with listening(meter.advance, expected=meter.expect):
        if total is not None:
            expect(total)  # the meter and whoever else watches this context (the CLI's progress line)
        try:
            yield transfer
        except BaseException:
            reached = f"{human_bytes(meter.moved)} of {human_bytes(meter.total or 0)}"
            meter.end(
                f"{transfer.label(meter.total or 0)} failed at {meter.percent:.0f}% ({reached})", failed=True
            )
            raise
    line = transfer.summary(time.perf_counter() - started)
    meter.end(line)
    _run_logger().info("%s", line)
