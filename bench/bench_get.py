"""Get workload of issue 9 against the tools a user would otherwise script, in the same run.

W5  get the W1 result (download, verify, extract) vs `curl -sf URL | tar xz -C dest`, for
    - an S3 gzip result fetched through a presigned URL (MinIO), the baseline given the URL presigned once
    - a local-publisher result from `prefect-bacalhau serve`

    .venv/bin/python bench/bench_get.py --size-mib 1024 --runs 5

Loopback only: MinIO and the result server run here on 127.0.0.1. Each run extracts into a fresh folder
under --dir, checked against the source folder (names and sizes) and deleted after the run (untimed).
Prints a Markdown table.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_s3 import storage_for  # noqa: E402
from common import CURL_TAR, build_mixed_folder, checker, folder_args, paired, print_table, ratio_row  # noqa: E402

from prefect_bacalhau_publish.blocks import LocalResultServer  # noqa: E402
from prefect_bacalhau_publish.publishers import publish_to  # noqa: E402
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec  # noqa: E402
from prefect_bacalhau_publish.tasks import get_result  # noqa: E402
from prefect_bacalhau_publish.testing import (  # noqa: E402
    MinioServer,
    ResultServerProcess,
    free_port,
    running_minio,
)


def extractor(url: str, dest: Path) -> Any:
    """The baseline: curl the URL into tar in a fresh `dest`."""

    def base() -> None:
        dest.mkdir()
        subprocess.run(["bash", "-c", CURL_TAR, "curl-tar", url, str(dest)], check=True)

    return base


def w5_s3(minio: MinioServer, folder: Path, runs: int, work: Path) -> str:
    storage = storage_for(minio)
    client: Any = minio.client()
    bucket = f"w5-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "w5/{executionID}"}}
    )
    published = publish_to(folder, spec, ExecutionContext.new(), s3=storage)
    key = published.to_bacalhau()["Params"]["Key"]
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)
    dest = work / "dest"

    def ours() -> None:
        get_result.fn(published, dest, s3=storage, presigned=True)

    a, b = paired(runs, ours, extractor(url, dest), cleanup=checker(folder, dest))
    return ratio_row("W5 get S3 presigned vs curl \\| tar xz", a, b, target=0.6)


def w5_local(folder: Path, runs: int, work: Path) -> str:
    storage = work / "storage"
    port = free_port()
    server = LocalResultServer(storage_dir=storage, host="127.0.0.1", port=port, public_address="loopback")
    published: PublishedResult = publish_to(
        folder, PublisherSpec.model_validate({"Type": "local"}), ExecutionContext.new(), local=server
    )
    url = published.to_bacalhau()["Params"]["URL"]
    dest = work / "dest"

    def ours() -> None:
        get_result.fn(published, dest, local=server)

    with ResultServerProcess(storage, work / "serve.log", port):
        a, b = paired(runs, ours, extractor(url, dest), cleanup=checker(folder, dest))
    return ratio_row("W5 get local URL vs curl \\| tar xz", a, b, target=0.6)


def main() -> None:
    args = folder_args(__doc__)
    folder = build_mixed_folder(args.dir, args.size_mib)
    rows: list[str] = []
    with running_minio(args.dir) as minio, tempfile.TemporaryDirectory(prefix="w5-", dir=args.dir) as tmp:
        rows.append(w5_s3(minio, folder, args.runs, Path(tmp)))
    with tempfile.TemporaryDirectory(prefix="w5-", dir=args.dir) as tmp:
        rows.append(w5_local(folder, args.runs, Path(tmp)))
    print_table(f"Get, {args.size_mib} MiB", rows)


if __name__ == "__main__":
    main()
