"""`make bench`: run every benchmark in bench/ and write bench/results/<date>.md (loopback only, bounded).

Each script compares, in the same run, against the tool a user would otherwise script and prints a Markdown
table; this collects them. Sizes are kept modest by default for a 2-core machine; pass --full for the
issue's sizes (1 GiB folders, 10 000 files, W6 at 1 GiB vs 4 GiB).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="the issue's sizes (slow: tens of minutes)")
    args = parser.parse_args()
    size = "1024" if args.full else "256"
    runs = [
        ["bench_archive.py", "--size-mib", size, "--runs", "3"],
        [
            "bench_s3.py",
            "--size-mib",
            size,
            "--files",
            "10000" if args.full else "2000",
            "--runs",
            "5" if args.full else "3",
            "--rss-sizes",
            "1024,4096" if args.full else "256,1024",
        ],
        ["bench_server.py", "--clients", "200", "--size-mib", "10", "--rounds", "2"],
    ]
    if (BENCH / "bench_ipfs.py").exists():
        runs.append(["bench_ipfs.py", "--size-mib", size])
    sections = [
        f"# Benchmarks {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({'full' if args.full else 'default'} sizes)\n"
    ]
    failed = 0
    for script, *rest in runs:
        print(f"bench: {script} {' '.join(rest)}", flush=True)
        done = subprocess.run(
            [sys.executable, str(BENCH / script), *rest], capture_output=True, text=True, check=False
        )
        table = "\n".join(line for line in done.stdout.splitlines() if line.startswith(("|", "#")))
        sections.append(f"## {script} {' '.join(rest)}\n\n{table or done.stdout[-2000:]}\n")
        if done.returncode != 0:
            failed += 1
            sections.append(f"exit code {done.returncode}:\n\n```\n{done.stderr[-2000:]}\n```\n")
        print(table or done.stderr[-2000:], flush=True)
    out = BENCH / "results" / f"{datetime.now(UTC):%Y-%m-%d}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(sections))
    print(f"bench: wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
