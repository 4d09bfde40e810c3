"""W10 of issue 21: list a 100 000-key prefix and keep one execution's share, against listing it alone with
boto3's paginator, in the same run on a local MinIO.

    .venv/bin/python bench/bench_partition.py --keys 100000 --runs 5

ours: the S3 input source's own listing (sources/s3.py `explode_key`, Bacalhau's explodeKey) and then
`partition_objects` for execution 1 of 4 (Partition Type `object`, FNV-1a of every full key); baseline:
boto3's `list_objects_v2` paginator collecting the keys. Target: ours ≤ 1.2 × baseline. The keys (empty
objects, ten date folders) are created once per run through MinIO's snowball auto-extract (tar batches),
MinIO keeping its data in /dev/shm when there is one (on a disk 100 000 objects take minutes); the setup
time is printed. A second table times `partition_objects` alone on the listed keys for each Partition type.
Loopback only: the MinIO is started here on 127.0.0.1 from the test-server cache.
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import sys
import tarfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import paired, print_table, ratio_row  # noqa: E402

from prefect_bacalhau_publish.partition import partition_objects  # noqa: E402
from prefect_bacalhau_publish.sources.s3 import explode_key  # noqa: E402
from prefect_bacalhau_publish.specs import S3Params  # noqa: E402
from prefect_bacalhau_publish.testing import running_minio  # noqa: E402

PREFIX = "w10/"
SHM = Path("/dev/shm")
COUNT, INDEX = 4, 1
TYPES: dict[str, dict[str, Any]] = {
    "object": {"Type": "object"},
    "regex, two groups": {"Type": "regex", "Pattern": r"(\d{4}-\d\d)-\d\d/part-\d*(\d)"},
    "substring": {"Type": "substring", "StartIndex": 0, "EndIndex": 10},
    "date": {"Type": "date", "DateFormat": "2006-01-02"},
}


def key_names(count: int) -> list[str]:
    """`count` keys under PREFIX in ten date folders, as a listing returns them (sorted)."""
    return sorted(f"{PREFIX}2024-01-{1 + i % 10:02d}/part-{i:06d}.csv" for i in range(count))


def put_empty(client: Any, bucket: str, keys: list[str], batches: int = 8) -> None:
    """Create an empty object at every key: `batches` tar archives of empty files, each PUT with MinIO's
    snowball auto-extract (MinIO stores every member as an object), 4 at a time. About 2.4 times as fast
    as 256 concurrent empty PUTs through obstore here (the per-request signing and parsing go away)."""

    def one(part: list[str]) -> None:
        body = io.BytesIO()
        with tarfile.open(fileobj=body, mode="w") as tar:
            for key in part:
                tar.addfile(tarfile.TarInfo(key))  # size 0
        client.put_object(
            Bucket=bucket,
            Key=f"snowball-{uuid.uuid4().hex}.tar",
            Body=body.getvalue(),
            Metadata={"snowball-auto-extract": "true"},
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, [keys[i::batches] for i in range(batches)]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=REPO / "bench" / "work")
    parser.add_argument(
        "--minio-dir",
        type=Path,
        default=SHM if SHM.is_dir() else None,
        help="where MinIO keeps its data (default /dev/shm: 100 000 PUTs take minutes on a disk; else --dir)",
    )
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    keys = key_names(args.keys)
    with running_minio(args.minio_dir or args.dir) as minio:
        storage = minio.storage()
        client: Any = storage.get_client()
        bucket = f"w10-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        start = time.perf_counter()
        put_empty(client, bucket, keys)
        setup = time.perf_counter() - start

        params = S3Params.model_validate({"Bucket": bucket, "Key": PREFIX, "Partition": TYPES["object"]})
        shares: list[int] = []
        cpu: dict[str, list[float]] = {"ours": [], "paginator": []}

        def ours() -> None:
            start = time.process_time()
            objects = explode_key(client, params)
            shares.append(len(partition_objects([o.key for o in objects], params, COUNT, INDEX)))
            cpu["ours"].append(time.process_time() - start)

        def paginator() -> None:
            start = time.process_time()
            listed = [
                item["Key"]
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
                for item in page.get("Contents", [])
            ]
            cpu["paginator"].append(time.process_time() - start)
            if len(listed) != len(keys):
                raise SystemExit(f"listed {len(listed)} of {len(keys)} keys")

        a, b = paired(
            args.runs, ours, paginator, cleanup=gc.collect
        )  # no run pays for the last one's garbage
        if len(set(shares)) != 1 or not 0 < shares[0] < len(keys):
            raise SystemExit(f"execution {INDEX} of {COUNT} got {shares} of {len(keys)} keys")
        row = ratio_row(
            f"W10 list {len(keys)} keys + partition_objects (object, 1 of {COUNT}) vs list_objects_v2 paginator",
            a,
            b,
            target=1.2,
        )
        print_table("Partitioned S3 listing", [row])
        ours_cpu, base_cpu = statistics.median(cpu["ours"][1:]), statistics.median(cpu["paginator"][1:])
        print("\n| detail of W10 | ours | baseline | ratio |")
        print("|---|---:|---:|---:|")
        print(
            f"| CPU s of this process (median; wall time varies with MinIO and other load) "
            f"| {ours_cpu:.2f} | {base_cpu:.2f} | {ours_cpu / base_cpu:.3f} |"
        )
        print(
            f"| setup: {len(keys)} empty objects (MinIO snowball tar batches, data under "
            f"{args.minio_dir or args.dir}) | {setup:.1f} s | {len(keys) / setup:.0f} objects/s | |"
        )

        print(f"\n### partition_objects alone, {len(keys)} listed keys, execution {INDEX} of {COUNT}\n")
        print("| Partition type | median s | µs per key | share |")
        print("|---|---:|---:|---:|")
        for name, partition in TYPES.items():
            source = S3Params.model_validate({"Bucket": bucket, "Key": PREFIX, "Partition": partition})
            times, share = [], 0
            for _ in range(max(3, args.runs)):
                t0 = time.perf_counter()
                share = len(partition_objects(keys, source, COUNT, INDEX))
                times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            print(f"| {name} | {median:.3f} | {median / len(keys) * 1e6:.2f} | {share} |")


if __name__ == "__main__":
    main()
