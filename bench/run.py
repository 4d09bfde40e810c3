"""`make bench`: run every benchmark in bench/ and write bench/results/<date>.md (loopback only, bounded).

With --full the file is <date>-full.md.

Each script compares, in the same run, against the tool a user would otherwise script and prints Markdown
tables; this collects every workload row ("| W…") into one summary table at the top of the file and on
stdout, followed by each script's own tables (and profile_w2.py's account of where W2's time goes:
both sides' CPU and MinIO's own profile). Default sizes are modest for a 2-core machine (256 MiB,
2000 files, 5 runs); --full runs the issue's (W1 at 256 MiB / 1 GiB / 4 GiB, W2 at 1k / 10k / 50k files,
W6 at 1 GiB vs 4 GiB, 5 runs, fewer at the largest sizes; tens of minutes). --only reruns some scripts into <date>-<names>.md.
bench_cli.py times the CLI as users run it, whole processes started fresh (S1/S2 start-up, W1/W4/W5 "CLI" rows);
a quick look at small size: `make bench BENCH_ARGS="--only bench_cli --size-mib 32"`.
bench_many.py times plain results of many small files both ways against rclone and `aws s3 cp` (W2, W9;
apt-get install rclone; its rows say "skipped" without it).
bench_ipfs.py publishes to and gets from Kubo against `ipfs add -r` / `ipfs get` (W3, W8; in-process and as
whole commands, issue 20).
bench_partition.py lists a 100 000-key prefix and keeps one execution's share (W10, issue 21), against
listing alone with boto3's paginator.
bench_scaleout.py runs 32 jobs on prefect-dask's DaskTaskRunner against the thread runner (W11, jobs per
minute, issue 17); bench_fanout.py publishes to S3 + local + IPFS in one pass against the three one after
the other (F1, issue 16).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPT_TIMEOUT = 60 * 60
"""Seconds one benchmark script may run (the slowest, bench_s3.py --full, takes about half an hour)."""
HEADER = [
    "| workload | ours (median s) | baseline (median s) | ratio ours/baseline (target) |",
    "|---|---|---|---|",
]


def plan(full: bool, size: int | None, files: int | None) -> list[list[str]]:
    """Each script with its arguments; `size`/`files` (smoke runs) replace every folder size / file count."""
    if size is not None or files is not None:
        s = str(size or 256)
        n = str(files or 2000)
        return [
            ["bench_archive.py", "--size-mib", s, "--runs", "3"],
            [
                "bench_s3.py",
                "--sizes",
                s,
                "--file-counts",
                n,
                "--runs",
                "3",
                "--rss-sizes",
                f"{s},{2 * int(s)}",
            ],
            ["bench_local.py", "--size-mib", s, "--runs", "3"],
            ["bench_get.py", "--size-mib", s, "--runs", "3"],
            ["bench_server.py", "--clients", "200", "--size-mib", "10", "--rounds", "2"],
            ["bench_ipfs.py", "--size-mib", s, "--runs", "3"],
            ["bench_cli.py", "--size-mib", s, "--runs", "3"],
            ["bench_logs.py", "--runs", "3"],
            ["bench_many.py", "--counts", n, "--runs", "1"],
            ["profile_w2.py", "--files", n, "--loop", n],
            ["bench_partition.py", "--keys", n, "--runs", "3"],
            ["bench_scaleout.py", "--jobs", "8", "--mib", "1", "--runs", "1"],
            ["bench_fanout.py", "--size-mib", s, "--runs", "1"],
        ]
    if full:
        return [
            ["bench_archive.py", "--size-mib", "1024", "--runs", "3"],
            ["bench_s3.py", "--sizes", "256,1024,4096", "--file-counts", "1000,10000,50000", "--runs", "5",
             "--rss-sizes", "1024,4096"],
            ["bench_local.py", "--size-mib", "1024", "--runs", "5"],
            ["bench_get.py", "--size-mib", "1024", "--runs", "5"],
            ["bench_server.py", "--clients", "200", "--size-mib", "10", "--rounds", "2"],
            ["bench_ipfs.py", "--sizes", "256,1024", "--runs", "5"],
            ["bench_cli.py", "--size-mib", "1024", "--runs", "3"],
            ["bench_logs.py", "--runs", "5"],
            ["bench_many.py", "--counts", "1000,10000,50000", "--runs", "3"],
            ["profile_w2.py", "--files", "10000"],
            ["bench_partition.py", "--keys", "100000", "--runs", "5"],
            ["bench_scaleout.py", "--runs", "3"],
            ["bench_fanout.py", "--size-mib", "1024", "--runs", "3"],
        ]  # fmt: skip
    return [
        ["bench_archive.py", "--size-mib", "256", "--runs", "3"],
        ["bench_s3.py", "--sizes", "256", "--file-counts", "2000", "--runs", "5", "--rss-sizes", "256,1024"],
        ["bench_local.py", "--size-mib", "256", "--runs", "5"],
        ["bench_get.py", "--size-mib", "256", "--runs", "5"],
        ["bench_server.py", "--clients", "200", "--size-mib", "10", "--rounds", "2"],
        ["bench_ipfs.py", "--size-mib", "256", "--runs", "5"],
        ["bench_cli.py", "--size-mib", "256", "--runs", "3"],
        ["bench_logs.py", "--runs", "5"],
        ["bench_many.py", "--counts", "2000", "--runs", "3"],
        ["profile_w2.py", "--files", "2000"],
        ["bench_partition.py", "--keys", "100000", "--runs", "5"],
        ["bench_scaleout.py", "--runs", "2"],
        ["bench_fanout.py", "--size-mib", "256", "--runs", "3"],
    ]


def tables(stdout: str) -> str:
    """The Markdown heading and table lines of a script's output, a blank line between separate blocks."""
    out: list[str] = []
    previous_kept = False
    for line in stdout.splitlines():
        keep = line.startswith(("|", "#"))
        if keep and out and (not previous_kept or out[-1].startswith("#") or line.startswith("#")):
            out.append("")
        if keep:
            out.append(line)
        previous_kept = keep
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="the issue's sizes (slow: tens of minutes)")
    parser.add_argument(
        "--only", help="comma list of scripts to run (e.g. bench_s3.py,bench_get); writes <date>-<names>.md"
    )
    parser.add_argument("--size-mib", type=int, help=argparse.SUPPRESS)  # smoke runs: every folder size
    parser.add_argument("--files", type=int, help=argparse.SUPPRESS)  # smoke runs: the W2 file count
    parser.add_argument("--work-dir", help=argparse.SUPPRESS)  # smoke runs: --dir for the scripts
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    smoke = args.size_mib is not None or args.files is not None
    runs = plan(args.full, args.size_mib, args.files)
    if args.work_dir:
        runs = [run + (["--dir", args.work_dir] if run[0] != "bench_server.py" else []) for run in runs]
    suffix = "-full" if args.full else ""  # a default run never overwrites the day's full one
    if args.only:
        wanted = [name if name.endswith(".py") else f"{name}.py" for name in args.only.split(",") if name]
        unknown = sorted(set(wanted) - {script for script, *_ in runs})
        if unknown:
            parser.error(f"unknown scripts {unknown}; choose from {[script for script, *_ in runs]}")
        runs = [run for run in runs if run[0] in wanted]
        suffix += "-" + "-".join(name.removesuffix(".py") for name in wanted)
    mode = "full sizes" if args.full else "default sizes"
    if smoke:
        mode = f"smoke run: --size-mib {args.size_mib} --files {args.files}"
        suffix = "-smoke" + suffix  # never overwrite a real run's file
    title = f"# Benchmarks {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({mode})\n"
    sections: list[str] = []
    rows: list[str] = []
    failed: list[str] = []
    for script, *rest in runs:
        print(f"bench: {script} {' '.join(rest)}", flush=True)
        try:
            done = subprocess.run(
                [sys.executable, str(BENCH / script), *rest],
                capture_output=True,
                text=True,
                check=False,
                timeout=SCRIPT_TIMEOUT,
            )
        except subprocess.TimeoutExpired as expired:
            out = expired.stdout.decode(errors="replace") if isinstance(expired.stdout, bytes) else ""
            err = f"timed out after {SCRIPT_TIMEOUT} s"
            done = subprocess.CompletedProcess(expired.cmd, -1, out or "", err)
        table = tables(done.stdout)
        rows += [line for line in done.stdout.splitlines() if line.startswith(("| W", "| S"))]
        sections.append(f"## {script} {' '.join(rest)}\n\n{table or done.stdout[-2000:]}\n")
        if done.returncode != 0:
            failed.append(f"{script} (exit code {done.returncode})")
            sections.append(f"exit code {done.returncode}:\n\n```\n{done.stderr[-2000:]}\n```\n")
        print(table or done.stderr[-2000:], flush=True)
    summary = "\n".join(["## Summary", "", *HEADER, *rows])
    if failed:
        summary += f"\n\nFailed (rows missing): {', '.join(failed)}"
    out = args.results_dir / f"{datetime.now(UTC):%Y-%m-%d}{suffix}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join([title, summary + "\n", *sections]))
    print(f"\n{summary}\n\nbench: wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
