"""Shared benchmark helpers: deterministic test folders and result rows."""

from __future__ import annotations

import argparse
import atexit
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SEED = 20240601
WORK = Path(__file__).resolve().parent / "work"
"""Where the benchmark folders are built once and reused, and the servers keep their data."""
_SENTENCE = (
    "the job result folder holds stdout stderr exitCode and outputs written by a container running on "
    "a bacalhau compute node which publishes them to s3 ipfs or local storage for later retrieval by "
    "prefect flows data pipeline model training metrics log line error warning info debug value"
)
TEXT = _SENTENCE.split()


def _text_pool(rng: random.Random) -> bytes:
    """About 7 MiB of words in random order with ragged lines: compresses like logs, not like one repeated line."""
    words = (rng.choice(TEXT) + ("\n" if rng.random() < 0.1 else "") for _ in range(1_200_000))
    return " ".join(words).encode()


def build_mixed_folder(root: Path, size_mib: int) -> Path:
    """A folder of about `size_mib` MiB, half random bytes and half text, files of 64 KiB–8 MiB; reused.

    The text is slices of a 7 MiB pool of randomly ordered words, so gzip -6 works as hard as on real logs
    (the issue's reference folder: GNU `tar czf` at ~14 MB/s on this machine kind).
    """
    folder = root / f"mixed-v2-{size_mib}MiB"
    marker = root / f".mixed-v2-{size_mib}MiB.complete"
    if marker.exists():
        return folder
    rng = random.Random(SEED)
    pool = _text_pool(rng)
    tripled = pool * 3  # a slice from anywhere in the pool of up to 8 MiB
    outputs = folder / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    total, index = size_mib << 20, 0
    while total > 0:
        size = min(total, rng.randint(64 << 10, 8 << 20))
        path = outputs / f"part-{index // 50:03d}" / f"file-{index:05d}.{'bin' if index % 2 else 'txt'}"
        path.parent.mkdir(exist_ok=True)
        if index % 2:
            path.write_bytes(rng.randbytes(size))
        else:
            start = rng.randrange(len(pool))
            path.write_bytes(tripled[start : start + size])
        total -= size
        index += 1
    (folder / "stdout").write_text("benchmark\n")
    (folder / "stderr").write_text("")
    (folder / "exitCode").write_text("0")
    marker.touch()
    return folder


SHM = Path("/dev/shm")


def server_home(asked: str, disk: Path, need: int) -> tuple[Path, str]:
    """Where a server's temp folder goes, and how a heading says it: tmpfs (`/dev/shm`) when `asked` is
    "memory" and it has `need` bytes free, else `disk`.

    The benchmarks compare clients against the same server; on this VM's journal-less ext4 a server's file
    creations scan past the inodes it freed in the last seconds, so its cost per object grew with the
    clients' rate and varied from run to run (bench/results/2026-12-02-server-disk.md)."""
    if asked == "memory" and SHM.is_dir() and os.access(SHM, os.W_OK):
        if shutil.disk_usage(SHM).free > need:
            return SHM, "in memory (tmpfs)"
        print(
            f"/dev/shm has less than {need >> 20} MiB free: the server keeps its data on disk",
            file=sys.stderr,
        )
    return disk, f"on disk ({disk})"


def build_small_files(root: Path, count: int, size: int = 4096) -> Path:
    """`count` random files of `size` bytes under outputs/, 500 per folder; reused."""
    folder = root / f"small-{count}x{size}"
    marker = root / f".small-{count}x{size}.complete"
    if marker.exists():
        return folder
    rng = random.Random(SEED)
    for index in range(count):
        path = folder / "outputs" / f"d{index // 500:03d}" / f"f{index:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    marker.touch()
    return folder


def ratio_row(name: str, ours: list[float], base: list[float], *, target: float | None) -> str:
    """A Markdown row: medians, and the median of the pairwise ratios against the target."""
    ratios = [a / b for a, b in zip(ours, base, strict=False)]
    ratio = statistics.median(ratios)
    verdict = "" if target is None else (" ✅" if ratio <= target else " ❌")
    goal = "" if target is None else f" (≤ {target})"
    return (
        f"| {name} | {statistics.median(ours):.3f} | {statistics.median(base):.3f} "
        f"| {ratio:.3f}{goal}{verdict} (n={len(ratios)}) |"
    )


_LAUNCHER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_kib(argv: list[str]) -> int:
    """Peak RSS (KiB) of the command `argv`, read in a tiny launcher process.

    A forked child's ru_maxrss counts the parent's memory from before exec, so the (large) benchmark
    process must not be the measured command's parent.
    """
    done = subprocess.run(
        [sys.executable, "-S", "-c", _LAUNCHER, *argv], check=True, capture_output=True, text=True
    )
    return int(done.stdout.split()[-1])


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(
    runs: int,
    ours: Callable[[], Any],
    base: Callable[[], Any],
    *,
    warmup_base: bool = True,
    cleanup: Callable[[], Any] = lambda: None,
) -> tuple[list[float], list[float]]:
    """Run A, B, A, B, ... so drift hits both alike; one warm-up each first (of `base` only if `warmup_base`).

    `cleanup` runs untimed after every call.
    """
    ours()
    cleanup()
    if warmup_base:
        base()
        cleanup()
    a, b = [], []
    for _ in range(runs):
        a.append(timed(ours))
        cleanup()
        b.append(timed(base))
        cleanup()
    return a, b


def print_table(title: str, rows: list[str]) -> None:
    """The workload table every benchmark prints (rows from `ratio_row`), under a dated heading."""
    print(f"\n### {title}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores\n")
    print("| workload | ours (median s) | baseline (median s) | ratio ours/baseline (target) |")
    print("|---|---|---|---|")
    for row in rows:
        print(row)


def folder_args(doc: str | None) -> argparse.Namespace:
    """--size-mib (default 1024), --runs (5), --dir (bench/work, created) for a mixed-folder benchmark."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=WORK)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    return args


CURL_TAR = 'set -o pipefail; curl -sf --noproxy "*" "$1" | tar xz -C "$2"'
"""The get baseline: `bash -c CURL_TAR curl-tar URL DEST` streams the URL into tar."""


def listing(folder: Path) -> list[tuple[str, int]]:
    """(relative path, size) of every file under `folder`."""
    return sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file()
    )


def checker(folder: Path, dest: Path, *, keep_until_exit: bool = False) -> Callable[[], None]:
    """Untimed, after each run: `dest` must hold the source folder's files; then delete it, and flush what
    is left to write, so no run pays for the previous one's writeback.

    `keep_until_exit` (many small files): move `dest` aside instead, deleted when the benchmark exits. On a
    filesystem without a journal (this project's VMs: ext4, `journal_task` none), ext4 skips every inode
    freed in the last 5 s (300 s once its inode table block is dirty again) when it allocates one
    (`recently_deleted`), so each run creating 10 000 files right after the previous run deleted 10 000
    paid a scan per file (`perf`: 65 % of the kernel's time) that grew run after run. Journaled
    filesystems, which users have, do not do this.
    """
    expected = listing(folder)
    trash = dest.parent / f".trash-{dest.name}"
    kept: list[Path] = []

    def cleanup() -> None:
        got = listing(dest)
        if got != expected:
            raise SystemExit(f"{dest} does not match {folder}: {len(got)} files vs {len(expected)}")
        if keep_until_exit:
            if not kept:
                trash.mkdir(exist_ok=True)
                atexit.register(shutil.rmtree, trash, ignore_errors=True)
            kept.append(trash / f"{os.getpid()}-{len(kept)}")
            dest.rename(kept[-1])
        else:
            shutil.rmtree(dest)
        os.sync()

    return cleanup


def empty(folder: Path) -> None:
    """Delete everything inside `folder`, keeping the folder."""
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
