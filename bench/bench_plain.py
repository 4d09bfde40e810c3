"""W2 close up: upload many small files to a local MinIO in three ways, in the same run, alternating.

  loop  boto3 put_object in a loop, no checksum (W2's baseline, as bench_s3.py times it)
  pool  a ThreadPoolExecutor(max_concurrency) of boto3 put_object with a SHA-256 checksum (boto3 alone)
  obstore  s3_plain.upload_files: obstore PUTs from max_concurrency threads, same checksum (the package)
  publish  (with --publish) the whole plain publish of the folder through publish_to, walk included

Each size gets one small warm-up per way, then rounds of every way in rotating order. Every upload
uses a fresh key prefix. Reported: median wall time, CPU ms per file of this process (user+sys) and of
MinIO, and the median of the per-round ratios against the loop (W2's target is ≤ 0.2).

    .venv/bin/python bench/bench_plain.py --files 1000,10000 --runs 5
    .venv/bin/python bench/bench_plain.py --files 50000 --runs 3 --budget-s 1200

Loopback only: MinIO is started here on 127.0.0.1 from the test-server cache.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import build_small_files  # noqa: E402

from prefect_bacalhau_publish.blocks import S3Storage  # noqa: E402
from prefect_bacalhau_publish.publishers.s3_plain import PlainFile, upload_files  # noqa: E402
from prefect_bacalhau_publish.testing import MinioServer, running_minio  # noqa: E402

TARGET = 0.2


@dataclass
class Runs:
    """Timings of one way of uploading at one size."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu(pid: int) -> float:
    """CPU seconds MinIO has used so far (Linux /proc), or NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def storage_for(minio: MinioServer) -> S3Storage:
    return minio.storage()


def ways(
    minio: MinioServer, bucket: str, publish: bool
) -> dict[str, Callable[[list[tuple[Path, str]]], None]]:
    """name → upload(items) for the three ways (and, if asked, a plain publish of the items' folder)."""
    storage = storage_for(minio)
    loop_client: Any = minio.client()
    pool_client: Any = storage.get_client()

    def loop(items: list[tuple[Path, str]]) -> None:
        for path, key in items:
            with open(path, "rb") as body:
                loop_client.put_object(Bucket=bucket, Key=key, Body=body)

    def pool(items: list[tuple[Path, str]]) -> None:
        def put(item: tuple[Path, str]) -> None:
            with open(item[0], "rb") as body:
                pool_client.put_object(
                    Bucket=bucket,
                    Key=item[1],
                    Body=body,
                    ChecksumAlgorithm="SHA256",
                    ContentType="application/octet-stream",
                )

        with ThreadPoolExecutor(max_workers=storage.max_concurrency) as executor:
            for future in [executor.submit(put, item) for item in items]:
                future.result()

    def obstore(items: list[tuple[Path, str]]) -> None:
        done: list[str] = []
        files = [PlainFile(path, key, path.stat().st_mode) for path, key in items]
        upload_files(storage, storage.get_store(bucket), lambda: pool_client, bucket, files, done=done)
        if len(done) != len(items):
            raise SystemExit(f"obstore uploaded {len(done)} of {len(items)} files")

    def publish_plain(items: list[tuple[Path, str]]) -> None:
        from prefect_bacalhau_publish.publishers import publish_to
        from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec

        root = Path(os.path.commonpath([path for path, _ in items]))  # the folder holding the items
        spec = PublisherSpec.model_validate(
            {"Type": "s3", "Params": {"Bucket": bucket, "Key": "publish/{executionID}", "Encoding": "plain"}}
        )
        publish_to(root, spec, ExecutionContext.new(), s3=storage)

    found: dict[str, Callable[[list[tuple[Path, str]]], None]] = {
        "loop": loop,
        "pool": pool,
        "obstore": obstore,
    }
    if publish:
        found["publish"] = publish_plain
    return found


def items_for(folder: Path, paths: list[Path], name: str) -> list[tuple[Path, str]]:
    prefix = f"{name}/{uuid.uuid4().hex}/"
    return [(path, prefix + path.relative_to(folder).as_posix()) for path in paths]


def bench_size(
    minio: MinioServer, work: Path, count: int, runs: int, budget_s: float, publish: bool
) -> tuple[dict[str, Runs], int]:
    folder = build_small_files(work, count)
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    bucket = f"plain-{count}-{uuid.uuid4().hex[:6]}"
    client: Any = minio.client()
    client.create_bucket(Bucket=bucket)
    upload = ways(minio, bucket, publish)
    for name, fn in upload.items():  # warm-up: connections, credentials, page cache
        fn(items_for(folder, paths[:200], f"warm-{name}"))
    results = {name: Runs() for name in upload}
    names = list(upload)
    started = perf_counter()
    done_rounds = 0
    for round_ in range(runs):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            items = items_for(folder, paths, name)
            cpu0, srv0, t0 = process_cpu(), server_cpu(minio.proc.pid if minio.proc else -1), perf_counter()
            upload[name](items)
            wall = perf_counter() - t0
            results[name].wall.append(wall)
            results[name].cpu.append(process_cpu() - cpu0)
            results[name].server_cpu.append(server_cpu(minio.proc.pid if minio.proc else -1) - srv0)
            print(f"  {count} files {name}: {wall:.2f}s", file=sys.stderr, flush=True)
        done_rounds += 1
        elapsed = perf_counter() - started
        if done_rounds < runs and elapsed / done_rounds * (done_rounds + 1) > budget_s:
            print(f"  {count} files: stopping after {done_rounds} rounds (budget)", file=sys.stderr)
            break
    return results, done_rounds


def rows(count: int, results: dict[str, Runs]) -> list[str]:
    base = results["loop"].wall
    out = []
    for name, runs in results.items():
        ratios = [a / b for a, b in zip(runs.wall, base, strict=True)]
        ratio = statistics.median(ratios)
        goal = "" if name == "loop" else (" ✅" if ratio <= TARGET else " ❌")
        out.append(
            f"| {count} | {name} | {statistics.median(runs.wall):.2f} "
            f"| {statistics.median(runs.wall) / count * 1000:.3f} "
            f"| {statistics.median(runs.cpu) / count * 1000:.3f} "
            f"| {statistics.median(runs.server_cpu) / count * 1000:.3f} "
            f"| {ratio:.3f}{goal} (n={len(ratios)}) |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", default="1000,10000", help="comma-separated file counts")
    parser.add_argument("--runs", type=int, default=5, help="rounds per size (each round runs all three)")
    parser.add_argument("--budget-s", type=float, default=900.0, help="stop a size's rounds past this")
    parser.add_argument("--dir", type=Path, default=REPO / "bench" / "work")
    parser.add_argument(
        "--publish", action="store_true", help="also time the whole plain publish (publish_to) of the folder"
    )
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    table: list[str] = []
    with running_minio(args.dir) as minio:
        for count in (int(c) for c in args.files.split(",")):
            results, _ = bench_size(minio, args.dir, count, args.runs, args.budget_s, args.publish)
            table += rows(count, results)
    print(f"\n### W2 plain upload, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores\n")
    print(
        "| files | way | median s | ms/file | CPU ms/file (ours) | CPU ms/file (MinIO) "
        f"| ratio vs loop (≤ {TARGET}) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in table:
        print(row)


if __name__ == "__main__":
    main()
