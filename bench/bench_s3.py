"""S3 workloads of issue 9 against the tools a user would otherwise script, in the same run, on a local MinIO.

W1  publish a mixed folder, gzip        vs (a) GNU `tar czf` + boto3 upload_file, (b) `tar | pigz -1 -p 2` + upload_file
W2  publish many 4 KiB files, plain     vs boto3 put_object in a loop
W6  peak RSS of a gzip publish at two sizes (growth, absolute)
W7  one chain hop (publish 1 KiB result, fetch it as the next input) vs boto3 put + get

    .venv/bin/python bench/bench_s3.py --sizes 256,1024,4096 --file-counts 1000,10000,50000 --runs 5

W1 runs at each of --sizes (MiB), W2 at each of --file-counts. To bound the time, at
4096 MiB or more W1b gets max(3, runs // 2) and W1a one; W2 at 50 000 files or more gets 3. Each row says
its n. W1's uploads are deleted (untimed) after each run. Loopback only: the MinIO is started here on
127.0.0.1 from the test-server cache. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import build_mixed_folder, build_small_files, paired, peak_rss_kib, print_table, ratio_row  # noqa: E402

from prefect_bacalhau_publish.blocks import S3Storage  # noqa: E402
from prefect_bacalhau_publish.publishers import publish_to  # noqa: E402
from prefect_bacalhau_publish.sources import fetch_source  # noqa: E402
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec  # noqa: E402
from prefect_bacalhau_publish.testing import MinioServer, running_minio  # noqa: E402


def storage_for(minio: MinioServer) -> S3Storage:
    return minio.storage()


def emptier(client: Any, bucket: str) -> Callable[[], None]:
    """Deletes every object in `bucket`, so the multi-GiB W1 uploads do not pile up on disk."""

    def empty() -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})

    return empty


def w1(minio: MinioServer, folder: Path, size_mib: int, runs: int, work: Path) -> list[str]:
    storage = storage_for(minio)
    client: Any = minio.client()
    bucket = f"w1-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "w1/{executionID}"}}
    )
    archive = work / "baseline.tar.gz"

    def ours() -> None:
        publish_to(folder, spec, ExecutionContext.new(), s3=storage)

    def tar_then_upload() -> None:
        subprocess.run(["tar", "czf", str(archive), "-C", str(folder), "."], check=True)
        client.upload_file(str(archive), bucket, f"base/{uuid.uuid4()}.tar.gz")

    def pigz_then_upload() -> None:
        subprocess.run(
            f"tar cf - -C {folder} . | pigz -1 -p 2 > {archive}",
            shell=True,
            check=True,
            executable="/bin/bash",
        )
        client.upload_file(str(archive), bucket, f"base/{uuid.uuid4()}.tar.gz")

    big = size_mib >= 4096  # bound the time: one tar czf run at 4 GiB is minutes
    runs_b, runs_a = (max(3, runs // 2), 1) if big else (runs, runs)
    rows = []
    empty = emptier(client, bucket)
    a, b = paired(runs_b, ours, pigz_then_upload, cleanup=empty)
    rows.append(
        ratio_row(f"W1b {size_mib} MiB publish gzip vs tar \\| pigz -1 -p 2 + upload_file", a, b, target=0.6)
    )
    # The page cache is warm from W1b: no baseline warm-up for the slow tar czf.
    a2, c = paired(runs_a, ours, tar_then_upload, warmup_base=False, cleanup=empty)
    rows.append(ratio_row(f"W1a {size_mib} MiB publish gzip vs tar czf + upload_file", a2, c, target=0.1))
    return rows


def w2(minio: MinioServer, files: Path, runs: int) -> list[str]:
    storage = storage_for(minio)
    client: Any = minio.client()
    bucket = f"w2-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "w2/{executionID}", "Encoding": "plain"}}
    )
    paths = sorted(p for p in files.rglob("*") if p.is_file())

    def ours() -> None:
        publish_to(files, spec, ExecutionContext.new(), s3=storage)

    def loop() -> None:
        prefix = f"base/{uuid.uuid4()}/"
        for path in paths:
            with open(path, "rb") as body:
                client.put_object(Bucket=bucket, Key=prefix + path.relative_to(files).as_posix(), Body=body)

    a, b = paired(3 if len(paths) >= 50_000 else runs, ours, loop)
    return [ratio_row(f"W2 publish {len(paths)} files plain vs put_object loop", a, b, target=0.2)]


def w7(minio: MinioServer, work: Path, runs: int) -> list[str]:
    storage = storage_for(minio)
    client: Any = minio.client()
    bucket = f"w7-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    result = work / "w7-result"
    (result / "outputs").mkdir(parents=True, exist_ok=True)
    (result / "outputs" / "one-kib.bin").write_bytes(os.urandom(1024))
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "w7/{executionID}"}}
    )
    body = (result / "outputs" / "one-kib.bin").read_bytes()

    def hop() -> None:
        published = publish_to(result, spec, ExecutionContext.new(), s3=storage)
        dest = work / f"w7-in-{uuid.uuid4().hex}"
        fetch_source(published.to_input_source("/inputs/a").source, dest, s3=storage)
        shutil.rmtree(dest)

    def raw() -> None:
        key = f"base/{uuid.uuid4()}"
        client.put_object(Bucket=bucket, Key=key, Body=body)
        client.get_object(Bucket=bucket, Key=key)["Body"].read()

    a, b = paired(runs * 4, hop, raw)
    extra_ms = (statistics.median(a) - statistics.median(b)) * 1000
    row = ratio_row("W7 chain hop (1 KiB publish + fetch) vs put + get", a, b, target=None)
    return [row.rstrip(" |") + f" (+{extra_ms:.0f} ms; target ≤ +150 ms) |"]


def peak_rss_mib(size_mib: int, work: Path, minio: MinioServer) -> float:
    """Peak RSS (MiB) of a child process that publishes a `size_mib` folder with gzip."""
    folder = build_mixed_folder(work, size_mib)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + '/bench');"
        "from bench_s3 import storage_for; from prefect_bacalhau_publish.testing import MinioServer;"
        "from prefect_bacalhau_publish.publishers import publish_to;"
        "from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec; from pathlib import Path;"
        "m = MinioServer(Path('/nonexistent'), port=int(sys.argv[2])); c = m.client();"
        "b = 'w6-' + sys.argv[4]; c.create_bucket(Bucket=b);"
        "publish_to(Path(sys.argv[3]), PublisherSpec.model_validate({'Type': 's3', 'Params': {'Bucket': b, 'Key': 'w6'}}),"
        " ExecutionContext.new(), s3=storage_for(m))"
    )
    argv = [sys.executable, "-c", code, str(REPO), str(minio.port), str(folder), uuid.uuid4().hex[:8]]
    return peak_rss_kib(argv) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="W1 folder size when --sizes is not given")
    parser.add_argument("--sizes", help="comma list of W1 folder sizes in MiB (default: --size-mib)")
    parser.add_argument(
        "--files", type=int, default=10_000, help="W2 file count when --file-counts is not given"
    )
    parser.add_argument("--file-counts", help="comma list of W2 file counts (default: --files)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rss-sizes", default="1024,4096", help="two sizes in MiB for W6")
    parser.add_argument("--only", default="W1,W2,W6,W7")
    parser.add_argument("--dir", type=Path, default=REPO / "bench" / "work")
    args = parser.parse_args()
    if shutil.which("pigz") is None:
        raise SystemExit("pigz is needed for the W1 baseline: apt-get install pigz")
    args.dir.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    sizes = [int(s) for s in (args.sizes or str(args.size_mib)).split(",")]
    counts = [int(n) for n in (args.file_counts or str(args.files)).split(",")]
    rows: list[str] = []
    with running_minio(args.dir) as minio, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        if "W1" in only:
            for size in sizes:
                rows += w1(minio, build_mixed_folder(args.dir, size), size, args.runs, work)
        if "W2" in only:
            for count in counts:
                rows += w2(minio, build_small_files(args.dir, count), args.runs)
        if "W7" in only:
            rows += w7(minio, work, args.runs)
        if "W6" in only:
            small, large = (int(s) for s in args.rss_sizes.split(","))
            rss_small, rss_large = peak_rss_mib(small, args.dir, minio), peak_rss_mib(large, args.dir, minio)
            growth = (rss_large / rss_small - 1) * 100
            rows.append(
                f"| W6 peak RSS gzip publish {small} MiB → {large} MiB | {rss_small:.0f} MiB → {rss_large:.0f} MiB "
                f"| growth {growth:+.1f}% | target growth ≤ 10%, peak < 200 MiB |"
            )
    print_table("S3 workloads", rows)


if __name__ == "__main__":
    main()
