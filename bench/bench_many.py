"""Many small objects both ways (issue 24), against the tools a user would script, in the same run, alternating.

W2  publish N × 4 KiB files plain: `prefect-bacalhau publish DIR -p s3://...,opt=encoding=plain` (whole
    process) and `publish_to` (in-process)  vs  `rclone copy --transfers 16 --checkers 16 DIR remote:...`
    (target ≤ 0.8 at 10 000) and `aws s3 cp --recursive` (no target)
W9  get that plain result into a folder: `prefect-bacalhau get spec.json -o DIR` (whole process) and
    `fetch_result` (in-process), every object checked against the manifest  vs  `rclone copy --transfers 16
    --checkers 16 remote:... DIR` (target ≤ 1.0 at 10 000) and `aws s3 cp --recursive` (no target)
R9  peak RSS of the W9 get at the largest count against the smallest (target: within 20% when the counts
    are 10 000 and 50 000)

    .venv/bin/python bench/bench_many.py --counts 1000,10000,50000 --runs 3

MinIO keeps its objects in memory (a folder on /dev/shm, tmpfs) unless `--minio-on disk` or /dev/shm lacks
the room: these workloads compare clients, and on this VM's disk MinIO's own cost per object set the pace
whatever the client (bench/results/2026-12-02-server-disk.md). On the journal-less ext4 of the VM a PUT's
folder creations scan the inodes freed in the last seconds (MinIO frees a temp folder per PUT), so its CPU
per object grew with the request rate, and the same 10 000 PUTs of ours took 15-29 s of MinIO's CPU from
run to run; on a journaled ext4 (a loop device on the same disk) the journal's commits bound it at 23-28 s
for 8, 16 or 32 client threads alike. Every heading says where MinIO's data was.

Every process is started fresh; ours and rclone alternate (A B A B ...); the AWS CLI runs max(1, runs // 3)
times per count (it is several times slower). CPU seconds per object (user + sys of the whole process) are
printed beside the times. Without `rclone` (Debian's `rclone` package) or `aws` on PATH, their rows say
"skipped". Loopback only: MinIO runs here on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import WORK, build_small_files, checker, peak_rss_kib, ratio_row, server_home  # noqa: E402

from prefect_bacalhau_publish.testing import MinioServer, running_minio  # noqa: E402

CLI = str(Path(sys.executable).parent / "prefect-bacalhau")
TRANSFERS = ["--transfers", "16", "--checkers", "16"]


class Timed:
    """Wall and CPU (user + sys of the child processes) of each call of a command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.cpu: dict[str, list[float]] = {}

    def command(
        self, name: str, argv: list[str] | Callable[[], list[str]], *, stdout: Path | None = None
    ) -> Callable[[], None]:
        """`argv`, or what `argv()` gives at each call (a new destination for each run)."""

        def run() -> None:
            args = argv() if callable(argv) else argv
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with open(stdout or os.devnull, "wb") as out:
                done = subprocess.run(args, env=self.env, stdout=out, stderr=subprocess.PIPE, check=False)
            if done.returncode != 0:
                raise SystemExit(
                    f"{' '.join(args)[:300]} failed ({done.returncode}): {done.stderr[-2000:]!r}"
                )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            self.cpu.setdefault(name, []).append(cpu)

        return run

    def function(self, name: str, fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            before = resource.getrusage(resource.RUSAGE_SELF)
            fn()
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            self.cpu.setdefault(name, []).append(cpu)

        return run


def fresh(name: str) -> str:
    """A prefix no earlier run wrote to. W2's uploads each go to a fresh prefix and nothing is deleted until
    every timing is done: MinIO keeps each object in files on this VM's journal-less ext4, where deleting
    10 000 objects before a run made that run's file creations scan the freed inodes (see
    `common.checker`)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def timings(runs: int, fns: list[Callable[[], None]], cleanup: Callable[[], None]) -> list[list[float]]:
    """Each of `fns` once as a warm-up, then `runs` rounds of all of them in turn; wall seconds per fn."""
    out: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
        cleanup()
    for _ in range(runs):
        for index, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            out[index].append(time.perf_counter() - start)
            cleanup()
    return out


def rclone_env(minio: MinioServer) -> dict[str, str]:
    return {
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Minio",
        "RCLONE_CONFIG_BENCH_ENDPOINT": minio.endpoint,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": minio.user,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": minio.password,
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
    }


_BYTES_PER_OBJECT = 16 * 1024
"""What one 4 KiB object costs MinIO on tmpfs, with room to spare (its folder, and `xl.meta` holding the
data inline: two pages)."""


def cpu_row(name: str, timed: Timed, count: int) -> str:
    cells = []
    for who, cpu in timed.cpu.items():
        if who.startswith(name):
            cells.append(f"{who.removeprefix(name).strip()}: {statistics.median(cpu) / count * 1000:.3f}")
    return f"| {name} CPU ms/object (median, whole process or in-process) | {'; '.join(cells)} |"


def skipped(name: str, tool: str) -> str:
    return f"| {name} | skipped: no {tool} | | |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="1000,10000", help="comma list of object counts")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=WORK)
    parser.add_argument("--only", default="W2,W9,R9")
    parser.add_argument(
        "--minio-on",
        choices=["memory", "disk"],
        default="memory",
        help="MinIO's data on /dev/shm or in --dir",
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    only = set(args.only.split(","))
    args.dir.mkdir(parents=True, exist_ok=True)
    have_rclone, have_aws = shutil.which("rclone") is not None, shutil.which("aws") is not None
    rows: list[str] = []
    cpu_rows: list[str] = []
    rss: dict[int, int] = {}
    need = max(counts) * (3 * args.runs + 6) * _BYTES_PER_OBJECT  # each count's bucket emptied after it
    minio_base, where = server_home(args.minio_on, args.dir, need)
    in_memory = minio_base != args.dir
    with running_minio(minio_base) as minio, tempfile.TemporaryDirectory(prefix="many-", dir=args.dir) as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PBP_", "RCLONE_"))}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's install keeps its bytecode caches
        env.update(
            AWS_ACCESS_KEY_ID=minio.user,
            AWS_SECRET_ACCESS_KEY=minio.password,
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            NO_PROXY="127.0.0.1,localhost",
            **rclone_env(minio),
        )
        os.environ.update(AWS_ACCESS_KEY_ID=minio.user, AWS_SECRET_ACCESS_KEY=minio.password)
        client: Any = minio.client()
        emptied: list[Callable[[], None]] = []
        for count in counts:
            folder = build_small_files(args.dir, count)
            bucket = f"many-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=bucket)
            timed = Timed(env)

            def empty_bucket(bucket: str = bucket) -> None:
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                    if keys:
                        client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})

            target = f"s3://{bucket}/ours/{{executionID}},opt=endpoint={minio.endpoint},opt=encoding=plain"
            if "W2" in only:
                rows += w2(timed, count, folder, target, bucket, minio, args.runs, have_rclone, have_aws)
                cpu_rows.append(cpu_row(f"W2 {count}", timed, count))
            if "W9" in only or "R9" in only:
                spec = work / f"spec-{count}.json"
                with open(spec, "wb") as out:
                    subprocess.run(
                        [CLI, "publish", str(folder), "-p", target], env=env, stdout=out, check=True
                    )
                prefix = json.loads(spec.read_text())["Params"]["Key"]
                if "W9" in only:
                    rows += w9(timed, count, folder, spec, bucket, prefix, work, args.runs, have_rclone,
                               have_aws)  # fmt: skip
                    cpu_rows.append(cpu_row(f"W9 {count}", timed, count))
                if "R9" in only:
                    dest = work / f"rss-got-{count}"  # kept until the end, as W9's are
                    rss[count] = peak_rss_kib(["env", *[f"{k}={v}" for k, v in env.items()], CLI, "get",
                                               str(spec), "-o", str(dest)])  # fmt: skip
            if in_memory:  # tmpfs frees without the disk's penalty, and memory is what it holds
                empty_bucket()
            else:
                emptied.append(empty_bucket)
        for emptying in emptied:  # after every timing: see `fresh` for why nothing is deleted before
            emptying()
    if len(rss) >= 2:
        low, high = min(rss), max(rss)
        growth = rss[high] / rss[low] - 1
        verdict = "✅" if growth <= 0.2 else "❌"
        rows.append(
            f"| R9 peak RSS get {low} → {high} objects | {rss[low] / 1024:.0f} MiB → {rss[high] / 1024:.0f} MiB "
            f"| growth {growth:+.1%} | target ≤ +20% {verdict} |"
        )
    print(f"\n### Many small objects (W2, W9), {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
          f"{os.cpu_count()} cores, MinIO's data {where}\n")  # fmt: skip
    print("| workload | ours (median s) | baseline (median s) | ratio ours/baseline (target) |")
    print("|---|---|---|---|")
    for row in rows:
        print(row)
    print("\n| CPU | per object |\n|---|---|")
    for row in cpu_rows:
        print(row)


def w2(
    timed: Timed,
    count: int,
    folder: Path,
    target: str,
    bucket: str,
    minio: MinioServer,
    runs: int,
    have_rclone: bool,
    have_aws: bool,
) -> list[str]:
    from prefect_bacalhau_publish.blocks import S3Storage
    from prefect_bacalhau_publish.publishers import publish_to
    from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec

    cli = timed.command(f"W2 {count} ours CLI", [CLI, "publish", str(folder), "-p", target])
    storage = S3Storage(endpoint_url=minio.endpoint)
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "lib/{executionID}", "Encoding": "plain"}}
    )
    lib = timed.function(
        f"W2 {count} ours in-process", lambda: publish_to(folder, spec, ExecutionContext.new(), s3=storage)
    )
    name = f"W2 {count} × 4 KiB publish plain"
    if not have_rclone:
        return [skipped(f"{name} vs rclone copy", "rclone")]
    rclone = timed.command(
        f"W2 {count} rclone",
        lambda: ["rclone", "copy", *TRANSFERS, str(folder), f"bench:{bucket}/{fresh('rc')}"],
    )
    a, b, c = timings(runs, [cli, rclone, lib], lambda: None)
    target_ratio = 0.8 if count >= 10_000 else None
    rows = [
        ratio_row(f"{name}, CLI vs rclone copy --transfers 16", a, b, target=target_ratio),
        ratio_row(f"{name}, in-process vs rclone copy --transfers 16", c, b, target=target_ratio),
    ]
    rows.append(aws_row(timed, f"W2 {count}", name, a,
                        lambda: [minio.endpoint, str(folder), f"s3://{bucket}/{fresh('aws')}"], runs, lambda: None,
                        have_aws))  # fmt: skip
    return rows


def w9(
    timed: Timed,
    count: int,
    folder: Path,
    spec: Path,
    bucket: str,
    prefix: str,
    work: Path,
    runs: int,
    have_rclone: bool,
    have_aws: bool,
) -> list[str]:
    from prefect_bacalhau_publish.resolve import fetch_result, resolve_result
    from prefect_bacalhau_publish.s3access import DefaultS3

    dest = work / "got"
    published = resolve_result(spec)
    storage = DefaultS3(endpoint_url=published.params.endpoint)  # type: ignore[union-attr]
    cli = timed.command(f"W9 {count} ours CLI", [CLI, "get", str(spec), "-o", str(dest)])
    lib = timed.function(f"W9 {count} ours in-process", lambda: fetch_result(published, dest, s3=storage))
    name = f"W9 {count} × 4 KiB get plain"
    if not have_rclone:
        return [skipped(f"{name} vs rclone copy", "rclone")]
    # rclone and the AWS CLI copy the prefix's content, i.e. the result folder itself.
    rclone = timed.command(
        f"W9 {count} rclone", ["rclone", "copy", *TRANSFERS, f"bench:{bucket}/{prefix}", str(dest)]
    )
    check = checker(folder, dest, keep_until_exit=True)
    a, b, c = timings(runs, [cli, rclone, lib], check)
    target_ratio = 1.0 if count >= 10_000 else None
    rows = [
        ratio_row(f"{name}, CLI vs rclone copy --transfers 16", a, b, target=target_ratio),
        ratio_row(f"{name}, in-process vs rclone copy --transfers 16", c, b, target=None),
    ]
    endpoint = published.params.endpoint or ""  # type: ignore[union-attr]
    rows.append(aws_row(timed, f"W9 {count}", name, a, [endpoint, f"s3://{bucket}/{prefix}", str(dest)], runs,
                        check, have_aws))  # fmt: skip
    return rows


def aws_row(
    timed: Timed,
    who: str,
    name: str,
    ours: list[float],
    args: list[str] | Callable[[], list[str]],
    runs: int,
    cleanup: Callable[[], None],
    have_aws: bool,
) -> str:
    """`aws s3 cp --recursive --endpoint-url ENDPOINT SRC DEST` (`args`), max(1, runs // 3) times, against
    `ours` (the CLI's times)."""
    if not have_aws:
        return skipped(f"{name} vs aws s3 cp", "aws")
    base = ["aws", "s3", "cp", "--recursive", "--quiet", "--endpoint-url"]
    aws = timed.command(f"{who} aws", lambda: [*base, *(args() if callable(args) else args)])
    (times,) = timings(max(1, runs // 3), [aws], cleanup)
    return ratio_row(f"{name}, CLI vs aws s3 cp --recursive", ours, times, target=None)


if __name__ == "__main__":
    main()
