"""Several publishers at once (SPEC §6): one result folder to every target in one pass, results in order.

`publish_many(result_dir, [spec, ...], context, s3=, ipfs=, local=)` runs every target at once, each in a
thread of its own, metered and logged as `publish_to` meters one publish:

- The archive targets (S3 with `gzip` encoding, local) share one deterministic tar.gz. `ArchiveFeed` writes
  it once, in a thread of its own, and tees its compressed bytes to each of them through a bounded pipe
  (`PIPE_BYTES` queued at most per target; chunks are the writer's own immutable buffers, not copies). Each
  target consumes its pipe as if it were writing the archive itself (the `archive` hook of `s3.publish` and
  `local.publish`), so the bytes S3 stores and the bytes in the local storage folder are the same: a
  single-PUT `ChecksumSHA256` is the local `.sha256` in base64. A slow target throttles the writer (its
  pipe fills); a target that fails leaves the tee and the others go on. The archive is written only once
  every archive target is ready to take it (or has failed before), so none misses its first bytes.
- IPFS and plain S3 read the files themselves, concurrently with the archive. (Reading them in the archive's
  pass would need the same order, but the tar holds paths sorted bytewise as a whole (`a.txt` before
  `a/b`) while `/api/v0/add` sends folders depth first; and it would tie the archive to the slowest target.
  The second read comes from the page cache: see `bench/bench_fanout.py`.)

Failures: every target is attempted, whatever the others do. When all succeed, the results come back in the
specs' order. When any fails, the successes are kept (nothing is deleted: they are complete, verified
results) and one `FanOutError` (a `PublishError`) is raised that names each failed target and its error,
and carries every outcome: `results` (a PublishedResult or None per spec, in order), `published` (the
successes) and `errors`. The archive itself failing (a FIFO in the folder, a file changing size) fails
every archive target with the writer's error, as each would have failed alone.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from .. import progress
from ..archive import ArchiveInfo, write_archive
from ..errors import PublishError, SpecError
from ..specs import ExecutionContext, PublishedResult, PublisherSpec
from ..transfer import location, metered, tree_size
from .s3_stream import run_threads

__all__ = [
    "PIPE_BYTES",
    "ArchiveFeed",
    "ArchiveStopped",
    "ArchiveWriter",
    "FanOutError",
    "is_archive_target",
    "publish_many",
]

PIPE_BYTES = 4 * 1024 * 1024
"""Compressed bytes queued for one archive target at most before the writer waits for it."""


class ArchiveWriter(Protocol):
    """Writes the result's archive into `out` and returns what it wrote, as `write_archive(result_dir, ...)`
    does: the `archive` hook of the S3 and local publishers."""

    def __call__(self, out: BinaryIO, *, digest: bool = True) -> ArchiveInfo: ...


class ArchiveStopped(PublishError):
    """The shared archive was stopped (Ctrl-C) before it was complete."""


class FanOutError(PublishError):
    """Some targets of a `publish_many` failed; the others were published and are kept.

    `results[i]` is spec i's PublishedResult, or None when it failed; `errors` lists `(i, spec, error)` for
    each failed target; `published` is the successes, in order. `transient` is true only when nothing was
    published and every error is worth a retry (a retry publishes every target again)."""

    def __init__(self, specs: Sequence[PublisherSpec], outcomes: Sequence[PublishedResult | BaseException]):
        self.specs = list(specs)
        self.outcomes = list(outcomes)
        self.results: list[PublishedResult | None] = [
            o if isinstance(o, PublishedResult) else None for o in self.outcomes
        ]
        self.errors: list[tuple[int, PublisherSpec, BaseException]] = [
            (i, s, o) for i, (s, o) in enumerate(zip(self.specs, self.outcomes, strict=True))
            if isinstance(o, BaseException)
        ]  # fmt: skip
        self.published: list[PublishedResult] = [r for r in self.results if r is not None]
        self.transient = not self.published and all(_transient(e) for _, _, e in self.errors)
        failed = "; ".join(f"[{i + 1}] {_target(s)}: {e}" for i, s, e in self.errors)
        kept = ", ".join(location(r.params) for r in self.published)
        super().__init__(
            f"published to {len(self.published)} of {len(self.specs)} targets; failed: {failed}"
            + (f"; kept (FanOutError.published): {kept}" if kept else "")
        )

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect pickles a failed task's exception
        return (type(self), (self.specs, self.outcomes))


def _transient(error: BaseException) -> bool:
    from ..s3errors import is_transient

    return is_transient(error)


def _target(spec: PublisherSpec) -> str:
    params = spec.params
    bucket, key = getattr(params, "bucket", None), getattr(params, "key", None)
    return f"s3://{bucket}/{key or ''}" if bucket else spec.type


def is_archive_target(spec: PublisherSpec) -> bool:
    """True for the publishers that write the result's tar.gz: S3 with `gzip` encoding, and local."""
    return spec.type == "local" or (spec.type == "s3" and spec.s3.archived)


# ------------------------------------------------------------------------------------------ the tee


class _Pipe:
    """The compressed bytes on their way to one target: at most `limit` bytes queued, then `put` waits."""

    def __init__(self, limit: int, context: contextvars.Context) -> None:
        self.context = context  # the target's: its meter counts the files the archive reads
        self.info: ArchiveInfo | None = None
        self._limit = limit
        self._chunks: deque[bytes | memoryview] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False

    def put(self, chunk: bytes | memoryview) -> bool:
        """Queue `chunk` (the writer's, never changed afterwards); False once the target has left."""
        with self._cond:
            while self._queued >= self._limit and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._chunks.append(chunk)
            self._queued += len(chunk)
            self._cond.notify_all()
        return True

    def end(self, info: ArchiveInfo | None = None, error: BaseException | None = None) -> None:
        """The archive is complete (`info`), or failed with `error`."""
        with self._cond:
            self.info, self._error, self._ended = info, error, True
            self._cond.notify_all()

    def take(self) -> list[bytes | memoryview] | None:
        """Every chunk queued so far (waiting for one), or None after the last; raises the writer's error."""
        with self._cond:
            while not self._chunks and not self._ended:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if not self._chunks:
                return None
            chunks = list(self._chunks)
            self._chunks.clear()
            self._queued = 0
            self._cond.notify_all()
            return chunks

    def close(self) -> None:
        """The target has left (done or failed): the writer stops feeding it."""
        with self._cond:
            self._closed = True
            self._chunks.clear()
            self._queued = 0
            self._cond.notify_all()


class _EveryoneLeft(Exception):
    """Raised inside the writer when no target takes the archive any more."""


class _Tee:
    """The writer's output stream: each write goes to every target still taking the archive."""

    def __init__(self, pipes: list[_Pipe]) -> None:
        self.pipes = pipes
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        # A read-only view of a bytes object (the compressor's output) cannot change: share it, no copy.
        chunk: bytes | memoryview = view if view.readonly and isinstance(view.obj, bytes) else bytes(view)
        self.pipes = [pipe for pipe in self.pipes if pipe.put(chunk)]
        if not self.pipes:
            raise _EveryoneLeft
        self.size += len(view)
        return len(view)

    def flush(self) -> None:
        """Nothing buffered here."""

    def advance(self, nbytes: int) -> None:
        """The archive read `nbytes` more of the files: that much progress for every target taking it."""
        for pipe in self.pipes:
            pipe.context.run(progress.advance, nbytes)


class ArchiveFeed:
    """One archive of `result_dir`, written once (`run`) and handed to `consumers` targets (`slot`).

    Each target gets one slot, an `ArchiveWriter` it calls as it would call `write_archive`, or releases
    unused (it failed before it needed the archive). `run` waits until every slot is taken or released,
    then writes the archive into the pipes of those taken; `writes` counts the archives written (0 or 1).
    """

    def __init__(self, result_dir: Path, consumers: int, *, pipe_bytes: int = PIPE_BYTES) -> None:
        self.result_dir = result_dir
        self.writes = 0
        self._pipe_bytes = pipe_bytes
        self._cond = threading.Condition()
        self._waiting = consumers
        self._pipes: list[_Pipe] = []
        self._aborted: BaseException | None = None

    def slot(self) -> _Slot:
        """One target's way to the archive (call it once, or `release` it)."""
        return _Slot(self)

    def _attach(self) -> _Pipe:
        pipe = _Pipe(self._pipe_bytes, contextvars.copy_context())
        with self._cond:
            if self._aborted is not None:
                raise self._aborted
            self._pipes.append(pipe)
            self._waiting -= 1
            self._cond.notify_all()
        return pipe

    def _release(self) -> None:
        with self._cond:
            self._waiting -= 1
            self._cond.notify_all()

    def abort(self, error: BaseException | None = None) -> None:
        """Stop: the writer ends (or never starts) and every target taking the archive gets `error`."""
        error = error or ArchiveStopped(
            f"the archive of {self.result_dir} was stopped before it was complete"
        )
        with self._cond:
            self._aborted = error
            pipes = list(self._pipes)
            self._cond.notify_all()
        for pipe in pipes:
            pipe.end(error=error)
            pipe.close()

    def run(self) -> None:
        """Write the archive once into every taken slot's pipe (in the caller's thread); errors go to them."""
        with self._cond:
            while self._waiting > 0 and self._aborted is None:
                self._cond.wait()
            if self._aborted is not None or not self._pipes:
                return
            pipes = list(self._pipes)
            self.writes += 1
        tee = _Tee(pipes)
        try:
            with progress.listening(tee.advance):
                info = write_archive(self.result_dir, cast(BinaryIO, tee), digest=False)
        except _EveryoneLeft:
            return  # each target left with its own error
        except BaseException as exc:  # the writer's error is every target's
            for pipe in pipes:
                pipe.end(error=exc)
            return
        for pipe in pipes:
            pipe.end(info=info)


class _Slot:
    """An `ArchiveWriter` that takes the shared archive from its pipe instead of writing one."""

    def __init__(self, feed: ArchiveFeed) -> None:
        self._feed = feed
        self._state = "open"  # then "taken" or "released"
        self._lock = threading.Lock()

    def __call__(self, out: BinaryIO, *, digest: bool = True) -> ArchiveInfo:
        with self._lock:
            if self._state != "open":
                raise RuntimeError(f"this archive slot was already {self._state}")
            self._state = "taken"
        pipe = self._feed._attach()
        sha = hashlib.sha256() if digest else None
        size = 0
        try:
            while (chunks := pipe.take()) is not None:
                for chunk in chunks:
                    if sha is not None:
                        sha.update(chunk)
                    _write_all(out, chunk)
                    size += len(chunk)
        finally:
            pipe.close()
        assert pipe.info is not None  # ended without an error
        return ArchiveInfo(
            sha256=sha.hexdigest() if sha is not None else "",
            size=size,
            files=pipe.info.files,
            bytes_in=pipe.info.bytes_in,
        )

    def release(self) -> None:
        """Not needed (the target failed first, or does not archive): the writer stops waiting for it."""
        with self._lock:
            if self._state != "open":
                return
            self._state = "released"
        self._feed._release()


def _write_all(out: BinaryIO, chunk: bytes | memoryview) -> None:
    view = memoryview(chunk)
    while view:
        n = out.write(view)
        if n is None:  # a non-blocking raw stream that would block
            raise BlockingIOError("output stream would block")
        view = view[n:]


# ------------------------------------------------------------------------------------------ fan-out


def _check(result_dir: Path, specs: Sequence[PublisherSpec]) -> None:
    if not specs:
        raise SpecError("publish_many needs at least one publisher spec")
    seen: dict[str, int] = {}
    for index, spec in enumerate(specs):
        shape = spec.model_dump_json(by_alias=True, exclude_none=True)
        if spec.type == "local":
            shape = "local"  # one storage folder, one execution id: two would be one archive
        if shape in seen:
            raise SpecError(
                f"publisher {index + 1} ({_target(spec)}) is the same target as publisher {seen[shape] + 1}; "
                "give each target once"
            )
        seen[shape] = index
    if not result_dir.is_dir():
        raise PublishError(f"result folder {result_dir} does not exist or is not a folder")


def _publish_one(
    result_dir: Path,
    spec: PublisherSpec,
    context: ExecutionContext,
    block: Any,
    archive: _Slot | None,
    tree: tuple[int, int],
) -> PublishedResult:
    """One target, metered as `publish_to` meters it; an archive target takes the shared archive."""
    from . import _destination, get_publisher

    files, size = tree
    with metered("published", "to", _destination(spec, context, block), total=size) as transfer:
        transfer.files = files
        publisher: Any = get_publisher(spec.type)
        if archive is None:
            result: PublishedResult = publisher(result_dir, spec, context, block)
        else:
            result = publisher(result_dir, spec, context, block, archive=archive)
        transfer.target = location(result.params)
    return result


def publish_many(
    result_dir: Path,
    specs: Sequence[PublisherSpec],
    context: ExecutionContext,
    *,
    s3: Any = None,
    ipfs: Any = None,
    local: Any = None,
) -> list[PublishedResult]:
    """Publish `result_dir` to every spec at once, in one pass (module docstring); the results in order.

    Raises SpecError for no spec or the same target twice, PublishError for a missing folder (before any
    target starts), and `FanOutError` when any target fails: the others are published and kept, and the
    error carries them (`results`, `published`) with each failure (`errors`).
    """
    specs = list(specs)
    _check(result_dir, specs)
    blocks = {"s3": s3, "ipfs": ipfs, "local": local}
    archived = [i for i, spec in enumerate(specs) if is_archive_target(spec)]
    feed = ArchiveFeed(result_dir, len(archived)) if len(archived) > 1 else None
    slots = {i: feed.slot() for i in archived} if feed is not None else {}
    tree = tree_size(result_dir)
    outcomes: list[PublishedResult | BaseException | None] = [None] * len(specs)

    def target(index: int) -> Callable[[], None]:
        def run() -> None:
            slot = slots.get(index)
            try:
                spec = specs[index]
                outcomes[index] = _publish_one(result_dir, spec, context, blocks[spec.type], slot, tree)
            except BaseException as exc:
                outcomes[index] = exc
            finally:
                if slot is not None:
                    slot.release()

        return run

    threads = [progress.thread(target(i), f"pbp-fanout-{specs[i].type}-{i}") for i in range(len(specs))]
    if feed is not None:  # no context copy: the writer's reads are counted by each target's meter
        threads.append(threading.Thread(target=feed.run, name="pbp-fanout-archive", daemon=True))
    run_threads(threads, on_interrupt=lambda: feed.abort() if feed is not None else None)
    done = cast(list[PublishedResult | BaseException], outcomes)
    for outcome in done:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # Ctrl-C or exit in a target: not a failed publish
    if any(isinstance(outcome, BaseException) for outcome in done):
        raise FanOutError(specs, done)
    return cast(list[PublishedResult], done)
