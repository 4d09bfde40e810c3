"""Where W2's time goes: a plain publish of many small files, with the CPU of both sides and MinIO's profile.

Publishes --files 4 KiB files (plain) to a local MinIO while MinIO profiles itself (its admin API,
`/minio/admin/v3/profile?profilerType=cpu`), then times a boto3 put_object loop over the first --loop
files. Prints CPU per file of our process and of MinIO (from /proc), the best ratio two cores allow
((ours + MinIO CPU per file) / 2 ÷ the loop's wall per file), and MinIO's hottest call paths
(`go tool pprof -top -cum`; needs Go). Loopback only.

    .venv/bin/python bench/profile_w2.py --files 10000
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_s3 import storage_for  # noqa: E402
from common import build_small_files  # noqa: E402

from prefect_bacalhau_publish.publishers import publish_to  # noqa: E402
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec  # noqa: E402
from prefect_bacalhau_publish.testing import MinioServer, binary, running_minio  # noqa: E402

KEEP = (
    "RenameData",
    "WriteAll",
    "Mkdir",
    "renameAll",
    "OpenFile",
    "PutObjectHandler",
    "net/http.(*conn).serve",
)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def minio_profile(minio: MinioServer, seconds: int, got: dict[str, bytes]) -> None:
    """Ask MinIO for a CPU profile of the next `seconds` (the answer comes when they are over)."""
    url = f"{minio.endpoint}/minio/admin/v3/profile?profilerType=cpu&duration={seconds}s"
    request = AWSRequest(
        method="POST", url=url, data=b"", headers={"x-amz-content-sha256": hashlib.sha256(b"").hexdigest()}
    )
    SigV4Auth(Credentials(minio.user, minio.password), "s3", "us-east-1").add_auth(request)
    answer = httpx.post(url, headers=dict(request.headers.items()), timeout=seconds + 60, trust_env=False)
    answer.raise_for_status()
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        for name in archive.namelist():
            if name.endswith(".pprof"):
                got["pprof"] = archive.read(name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--loop", type=int, default=2000, help="files for the put_object loop's pace")
    parser.add_argument("--dir", type=Path, default=REPO / "bench" / "work")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    files = build_small_files(args.dir, args.files)
    with running_minio(args.dir) as minio, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        assert minio.proc is not None
        client: Any = minio.client()
        bucket = f"p2-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        storage = storage_for(minio)
        spec = PublisherSpec.model_validate(
            {"Type": "s3", "Params": {"Bucket": bucket, "Key": "w2/{executionID}", "Encoding": "plain"}}
        )
        publish_to(files, spec, ExecutionContext.new(), s3=storage)  # warm-up
        got: dict[str, bytes] = {}
        start = time.perf_counter()
        ours0, minio0 = own_cpu(), process_cpu(minio.proc.pid)
        profiler = threading.Thread(target=minio_profile, args=(minio, 5, got))
        profiler.start()
        publish_to(files, spec, ExecutionContext.new(), s3=storage)
        wall = time.perf_counter() - start
        ours, theirs = own_cpu() - ours0, process_cpu(minio.proc.pid) - minio0
        profiler.join()
        paths = sorted(p for p in files.rglob("*") if p.is_file())[: args.loop]
        start = time.perf_counter()
        for path in paths:
            with open(path, "rb") as body:
                client.put_object(Bucket=bucket, Key=f"loop/{path.name}", Body=body)
        loop = (time.perf_counter() - start) / len(paths)
        n = args.files
        floor = (ours + theirs) / n / 2
        print(f"\n### W2 profile: {n} files of 4 KiB, plain, {os.cpu_count()} cores\n")
        print("| measure | value |")
        print("|---|---:|")
        print(f"| our publish, wall per file | {wall / n * 1000:.3f} ms |")
        print(f"| our process, CPU per file | {ours / n * 1000:.3f} ms |")
        print(f"| MinIO, CPU per file | {theirs / n * 1000:.3f} ms |")
        print(f"| boto3 put_object loop, wall per file | {loop * 1000:.3f} ms |")
        print(f"| ratio measured (ours / loop) | {wall / n / loop:.3f} |")
        print(f"| best ratio 2 cores allow ((ours + MinIO CPU) / 2 / loop) | {floor / loop:.3f} |")
        profile = Path(tmp) / "minio-cpu.pprof"
        profile.write_bytes(got["pprof"])
        if shutil.which("go"):
            top = subprocess.run(
                ["go", "tool", "pprof", "-top", "-cum", "-nodecount=200", str(binary("minio")), str(profile)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            print("\n#### MinIO CPU profile (5 s of the publish), cumulative share of its samples\n")
            print("| share | function |")
            print("|---:|---|")
            for line in top:
                if "Duration:" in line:
                    print(f"| – | {line.strip()} |")
                parts = line.split()
                if len(parts) >= 6 and any(key in parts[-1] for key in KEEP):
                    print(f"| {parts[4]} | `{parts[-1].rsplit('/', 1)[-1]}` |")


if __name__ == "__main__":
    main()
