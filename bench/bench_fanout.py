"""One result, several publishers, one pass (issue 16 §1): the mixed folder published to S3 (gzip) + local +
IPFS by one `publish_many` against the same three publishes one after the other, in the same run,
alternating (A B A B ...).

F1  publish_many(DIR, [s3, local, ipfs])  vs  publish_to(s3); publish_to(local); publish_to(ipfs)   ≤ 0.6

In-process, MinIO and Kubo started here on 127.0.0.1, the local storage folder under --dir (publishing
needs no result server). After every run, untimed: the S3 objects are deleted, the storage folder emptied,
Kubo unpinned and garbage-collected, and everything written flushed (`sync`), so no run pays for another's
writeback. Every run must give the same CID, and the fan-out's S3 ChecksumSHA256 must be the local
`.sha256` (both are one archive). Also printed: each sequential publish's median, the CPU seconds per run
of this process and of MinIO + Kubo, and how long one read of the folder from the page cache takes (what
reading the files for IPFS in the archive's pass could save at most).

    .venv/bin/python bench/bench_fanout.py --size-mib 1024 --runs 5
"""

from __future__ import annotations

import base64
import hashlib
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_ipfs import empty_node  # noqa: E402
from common import build_mixed_folder, empty, folder_args, paired, print_table, ratio_row  # noqa: E402

from prefect_bacalhau_publish.blocks import IPFSNode, LocalResultServer  # noqa: E402
from prefect_bacalhau_publish.publishers import publish_to  # noqa: E402
from prefect_bacalhau_publish.publishers.fanout import publish_many  # noqa: E402
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec  # noqa: E402
from prefect_bacalhau_publish.testing import running_kubo, running_minio  # noqa: E402

BUCKET = "fanout"
MiB = 1024 * 1024


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu(pids: list[int]) -> float:
    """User + system CPU seconds the server processes (MinIO, Kubo) have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def read_once(folder: Path) -> float:
    """Seconds to read every file of `folder` once (from the page cache: it was just published)."""
    started = time.perf_counter()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb", buffering=0) as handle:
                while handle.read(1 << 20):
                    pass
    return time.perf_counter() - started


def f1(
    folder: Path, runs: int, work: Path, s3: Any, client: Any, node: IPFSNode, kubo: Any, servers: list[int]
) -> list[str]:
    storage = work / "storage"
    storage.mkdir(mode=0o700)
    local = LocalResultServer(storage_dir=storage, host="127.0.0.1", port=6001, public_address="loopback")
    specs = [
        PublisherSpec.model_validate({"Type": "s3", "Params": {"Bucket": BUCKET, "Key": "f1/{executionID}"}}),
        PublisherSpec.model_validate({"Type": "local"}),
        PublisherSpec.model_validate({"Type": "ipfs"}),
    ]
    blocks = {"s3": s3, "local": local, "ipfs": node}
    cids: set[str] = set()
    parts: dict[str, list[float]] = {spec.type: [] for spec in specs}
    cpu_seconds: dict[str, list[float]] = {"fan-out": [], "one after the other": []}
    server_seconds: dict[str, list[float]] = {"fan-out": [], "one after the other": []}
    checked: list[bool] = []

    def metered_cpu(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            before, before_servers = cpu(), server_cpu(servers)
            fn()
            cpu_seconds[name].append(cpu() - before)
            server_seconds[name].append(server_cpu(servers) - before_servers)

        return run

    def note(results: list[PublishedResult]) -> None:
        for result in results:
            if result.type == "ipfs":
                cids.add(result.to_bacalhau()["Params"]["CID"])

    def ours() -> None:
        context = ExecutionContext.new()
        results = publish_many(folder, specs, context, s3=s3, ipfs=node, local=local)
        note(results)
        if not checked:  # once (in the warm-up run): S3 and local hold one archive
            params = results[0].to_bacalhau()["Params"]
            sidecar = (storage / f"{context.execution_id}.tar.gz.sha256").read_text().split()[0]
            digest = hashlib.sha256()
            for chunk in client.get_object(Bucket=BUCKET, Key=params["Key"])["Body"].iter_chunks(1 << 20):
                digest.update(chunk)
            single = "-" not in params["ChecksumSHA256"]  # one PUT: S3's checksum is the whole object's
            if digest.hexdigest() != sidecar or (
                single and params["ChecksumSHA256"] != base64.b64encode(digest.digest()).decode()
            ):
                raise SystemExit(f"the S3 object ({params['ChecksumSHA256']}) is not the local archive")
            checked.append(True)

    def theirs() -> None:
        context = ExecutionContext.new()
        results = []
        for spec in specs:
            started = time.perf_counter()
            results.append(publish_to(folder, spec, context, **{spec.type: blocks[spec.type]}))
            parts[spec.type].append(time.perf_counter() - started)
        note(results)

    def cleanup() -> None:
        listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        for item in listed:
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
        empty(storage)
        empty_node(kubo)
        os.sync()

    a, b = paired(
        runs,
        metered_cpu("fan-out", ours),
        metered_cpu("one after the other", theirs),
        cleanup=cleanup,
    )
    if len(cids) != 1:
        raise SystemExit(f"CIDs differ between runs: {cids}")
    size = folder.name.removeprefix("mixed-v2-")
    rows = [ratio_row(f"F1 fan-out S3 + local + IPFS, {size}, vs one after the other", a, b, target=0.6)]
    for name, times in parts.items():
        rows.append(f"| (sequential part: {name} alone) | | {statistics.median(times):.3f} | |")
    for name, times in cpu_seconds.items():
        theirs = statistics.median(server_seconds[name])
        rows.append(
            f"| (CPU s, {name}: this process + MinIO and Kubo) | {statistics.median(times):.2f} + "
            f"{theirs:.2f} | | |"
        )
    reads = [read_once(folder) for _ in range(3)]
    rows.append(f"| (one read of the folder from the page cache) | {statistics.median(reads):.3f} | | |")
    return rows


def main() -> None:
    args = folder_args(__doc__)
    folder = build_mixed_folder(args.dir, args.size_mib)
    files = [p for p in folder.rglob("*") if p.is_file()]
    print(f"folder: {sum(p.stat().st_size for p in files) / MiB:.1f} MiB in {len(files)} files")
    with (
        running_minio(args.dir) as minio,
        running_kubo(args.dir) as kubo,
        tempfile.TemporaryDirectory(prefix="f1-", dir=args.dir) as tmp,
    ):
        client: Any = minio.client()
        client.create_bucket(Bucket=BUCKET)
        node = IPFSNode(api_address=kubo.api_url, pin=True)
        servers = [server.proc.pid for server in (minio, kubo) if server.proc is not None]
        rows = f1(folder, args.runs, Path(tmp), minio.storage(), client, node, kubo, servers)
    print_table(f"Fan-out publish, {args.size_mib} MiB", rows)


if __name__ == "__main__":
    main()
