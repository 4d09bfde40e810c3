"""Benchmark `write_archive` / `extract_archive` against GNU tar + gzip, and measure peak memory.

Builds (or reuses) bench/common.py's mixed folder of about --size-mib MiB — half random bytes, half
text, files of 64 KiB to 8 MiB, fixed seed — then times each contender at least --runs times and prints a
Markdown table of medians. Peak RSS of `write_archive` is measured in a child process (os.wait4).

    .venv/bin/python bench/bench_archive.py --size-mib 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Load the archive module without running the package __init__ (which imports Prefect), so that import
# time and memory measured here are the archive module's own. The same prelude is used in RSS children.
PRELUDE = (
    f"import sys, types; sys.path.insert(0, {str(REPO)!r}); "
    "pkg = types.ModuleType('prefect_bacalhau_publish'); "
    f"pkg.__path__ = [{str(REPO / 'prefect_bacalhau_publish')!r}]; "
    "sys.modules['prefect_bacalhau_publish'] = pkg; "
    "from prefect_bacalhau_publish import archive; "
)
exec(PRELUDE)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_mixed_folder  # noqa: E402
from common import peak_rss_kib as common_peak_rss_kib  # noqa: E402

from prefect_bacalhau_publish.archive import (  # noqa: E402
    HAVE_ISAL,
    ArchiveInfo,
    extract_archive,
    write_archive,
)


def timed(fn: Callable[[], object], runs: int, setup: Callable[[], object] = lambda: None) -> float:
    """Median wall time of ``runs`` calls of ``fn`` (``setup`` runs untimed before each)."""
    times = []
    for _ in range(runs):
        setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sh(command: str) -> None:
    subprocess.run(["bash", "-c", "set -o pipefail; " + command], check=True)


def ours(folder: Path, compressor: str) -> Callable[[], ArchiveInfo]:
    def run() -> ArchiveInfo:
        with open(os.devnull, "wb") as sink:
            return write_archive(folder, sink, compressor=compressor)  # type: ignore[arg-type]

    return run


def peak_rss_kib(code: str) -> int:
    """Peak RSS (KiB) of a fresh Python running ``code`` (measured by bench/common.py's launcher)."""
    return common_peak_rss_kib([sys.executable, "-c", PRELUDE + code])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="folder size in MiB (default 1024)")
    parser.add_argument("--dir", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--runs", type=int, default=3, help="runs per contender (median reported)")
    args = parser.parse_args()
    runs = max(args.runs, 1)
    args.dir.mkdir(parents=True, exist_ok=True)

    folder = build_mixed_folder(args.dir, args.size_mib)
    content = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    sh(f"cat $(find {folder} -type f) > /dev/null")  # warm the page cache for everyone alike
    mb = content / 1e6
    rows: list[tuple[str, float, str]] = []

    def row(name: str, seconds: float, baseline: float | None) -> None:
        ratio = f"{seconds / baseline:.2f}" if baseline else "1.00 (baseline)"
        rows.append((name, seconds, ratio))

    tar_gz = timed(lambda: sh(f"tar czf - -C {folder} . > /dev/null"), runs)
    tar_gzip1 = timed(lambda: sh(f"tar cf - -C {folder} . | gzip -1 > /dev/null"), runs)
    row("GNU `tar czf -` (gzip -6)", tar_gz, None)
    row("GNU `tar cf - \\| gzip -1`", tar_gzip1, None)
    sizes: dict[str, int] = {}
    for compressor in (["isal"] if HAVE_ISAL else []) + ["zlib"]:
        seconds = timed(ours(folder, compressor), runs)
        sizes[compressor] = ours(folder, compressor)().size
        row(f"write_archive {compressor} level 1 (vs gzip -1)", seconds, tar_gzip1)

    archive = args.dir / f"bench-{args.size_mib}.tar.gz"
    with open(archive, "wb") as out:
        write_archive(folder, out)
    dest = args.dir / "extract-dest"

    def fresh() -> None:
        if dest.exists():
            shutil.rmtree(dest)

    def run_tar_x() -> None:
        dest.mkdir()
        sh(f"tar xzf {archive} -C {dest}")

    tar_x = timed(run_tar_x, runs, fresh)
    ours_x = timed(lambda: extract_archive(archive, dest), runs, fresh)
    fresh()
    row("GNU `tar xzf`", tar_x, None)
    row("extract_archive (vs tar xzf)", ours_x, tar_x)

    idle = peak_rss_kib("pass")
    rss = {
        name: peak_rss_kib(
            f"from pathlib import Path; archive.archive_digest(Path({str(folder)!r}), compressor={name!r})"
        )
        for name in (["isal"] if HAVE_ISAL else []) + ["zlib"]
    }
    rss_x = peak_rss_kib(
        "import shutil; from pathlib import Path; "
        f"archive.extract_archive(Path({str(archive)!r}), Path({str(dest)!r})); shutil.rmtree({str(dest)!r})"
    )

    print(f"\nFolder: {folder} — {content / 2**20:.0f} MiB of content, CPUs: {os.cpu_count()}, runs: {runs}")
    print(f"Compressed: {', '.join(f'{k} {v / 2**20:.1f} MiB' for k, v in sizes.items())}\n")
    print("| operation | median s | MB/s (content) | time ratio ours/baseline |")
    print("|---|---:|---:|---:|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds:.2f} | {mb / seconds:.0f} | {ratio} |")
    print("\n| peak RSS (child process) | MiB |")
    print("|---|---:|")
    print(f"| python + import archive (idle) | {idle / 1024:.1f} |")
    for name, kib in rss.items():
        print(f"| archive_digest {name}, {args.size_mib} MiB folder | {kib / 1024:.1f} |")
    print(f"| extract_archive, {args.size_mib} MiB archive | {rss_x / 1024:.1f} |")


if __name__ == "__main__":
    main()
