"""Run a job's process: its own cwd and env, stdout/stderr kept byte-exact, lines shown live, timeout → 124.

Each stream is read in 64 KiB chunks by a thread that writes the bytes to the result file (capped at
`MAX_STREAM_BYTES`), keeps the last `TAIL_BYTES`, and, while `OutputLog` still takes lines, cuts them at
newlines for the run's logger. The process runs in its own session, so a timeout (or the end of the job)
kills everything it started, as the end of a Bacalhau execution does.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .progress import thread

__all__ = ["MAX_STREAM_BYTES", "TAIL_BYTES", "OutputLog", "Streams", "run_process"]

MAX_STREAM_BYTES = 1024 * 1024 * 1024
TAIL_BYTES = 4096
CHUNK = 64 * 1024


@dataclass
class OutputLog:
    """A job's output lines to a logger, bounded: at most `max_lines` lines, each cut at `max_line_bytes`."""

    logger: Any
    job: str
    max_lines: int = 10_000
    max_line_bytes: int = 4096
    logged: int = 0
    dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def full(self) -> bool:
        return self.logged >= self.max_lines

    def lines(self, stream: str, raws: list[bytes]) -> None:
        """Log the lines of `stream` read in one chunk (without newlines) as one record, one line each, or
        count those past the cap. One record per chunk keeps a chatty job cheap: a job printing slowly shows
        each line as it comes, a fast one sends a few large records."""
        with self._lock:
            room = max(0, self.max_lines - self.logged)
            shown = raws[:room]
            self.logged += len(shown)
            self.dropped += len(raws) - len(shown)
        if not shown:
            return
        prefix = f"[{self.job} {stream}] "
        texts = []
        for raw in shown:
            text = raw[: self.max_line_bytes].decode("utf-8", "replace").rstrip("\r")
            if len(raw) > self.max_line_bytes:
                text += f" … [cut at {self.max_line_bytes} bytes; the result's {stream} has the whole line]"
            texts.append(prefix + text)
        self.logger.info("%s", "\n".join(texts))

    def count(self, lines: int) -> None:
        """Count lines not logged because the cap was reached."""
        with self._lock:
            self.dropped += lines

    def close(self) -> None:
        """Say how many lines were not logged, if any."""
        if self.dropped:
            self.logger.info(
                "[%s] %d more output line(s) not logged (limit %d); the result's stdout/stderr hold them all",
                self.job,
                self.dropped,
                self.max_lines,
            )


@dataclass
class Streams:
    """The last bytes of each stream, for `JobResult`."""

    stdout_tail: bytes = b""
    stderr_tail: bytes = b""


def _pump(fd: int, sink: BinaryIO, stream: str, log: OutputLog | None, tails: dict[str, bytes]) -> None:
    written = 0
    tail = b""
    pending = b""
    limit = log.max_line_bytes if log is not None else 0
    while chunk := os.read(fd, CHUNK):
        if written < MAX_STREAM_BYTES:
            sink.write(chunk[: MAX_STREAM_BYTES - written])
            written += len(chunk)
        tail = (tail + chunk)[-TAIL_BYTES:]
        if log is None:
            continue
        if log.full:
            log.count(chunk.count(b"\n"))
            pending = b""
            continue
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        if (
            len(pending) > limit + 1
        ):  # a line longer than is shown: keep only what will be (memory stays flat)
            pending = pending[: limit + 1]
        if lines:
            log.lines(stream, lines)
    if log is not None and pending:
        log.lines(stream, [pending])
    os.close(fd)
    tails[stream] = tail


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_process(
    command: str | Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout: Path,
    stderr: Path,
    timeout: float | None,
    log: OutputLog | None = None,
) -> tuple[int, Streams]:
    """Run `command` (a string through the shell, a list without one); returns its exit code and stream tails.

    124 when it ran past `timeout` seconds (everything it started is killed), 127 when it cannot start.
    """
    tails: dict[str, bytes] = {}
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = subprocess.Popen(
                command,
                shell=isinstance(command, str),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(out_r)
            os.close(err_r)
            message = f"could not start the command: {exc}\n".encode()
            err.write(message)
            return 127, Streams(stderr_tail=message[-TAIL_BYTES:])
        finally:
            os.close(out_w)
            os.close(err_w)
        # in a copy of this context: Prefect's logger reaches the run's API (not a stray server) only there
        pumps = [
            thread(functools.partial(_pump, out_r, out, "stdout", log, tails), "pbp-job-stdout"),
            thread(functools.partial(_pump, err_r, err, "stderr", log, tails), "pbp-job-stderr"),
        ]
        for pump in pumps:
            pump.start()
        timed_out = False
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out, code = True, 124
        _kill_group(proc)
        proc.wait()
        for pump in pumps:
            pump.join()
        if timed_out:
            note = f"\njob timed out after {timeout}s\n".encode()
            err.write(note)
            tails["stderr"] = (tails.get("stderr", b"") + note)[-TAIL_BYTES:]
    return code, Streams(tails.get("stdout", b""), tails.get("stderr", b""))
