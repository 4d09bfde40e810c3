"""`prefect-bacalhau` as users run it (issue 15 §4): whole processes started fresh, start-up and set-up included,
against the tools a user would script, also started fresh, in the same run, alternating (A B A B ...).

S1  `prefect-bacalhau --help`                                            target ≤ 0.3 s
S2  `prefect-bacalhau get spec.json -o DIR` of a tiny local result       target ≤ 0.8 s
    (both beside a bare `python -c pass`, the interpreter's own start-up)
W1  `publish DIR -p s3://...` (gzip)  vs (a) GNU `tar czf` + a boto3 upload script, (b) `tar | pigz -1 -p 2` + it
W4  `publish DIR -p local`            vs (a) `tar czf`, (b) `tar cf - | pigz -1 -p 2 >`, writing the same folder
W5  `get spec.json -o DIR` of that folder published to S3 (S3 API, and `--presigned`) and published locally
                                      vs `curl -sf URL | tar xz -C DIR` (the presigned URL; the result URL)

    .venv/bin/python bench/bench_cli.py --size-mib 1024 --runs 3      (--only S,W5 --size-mib 32: a quick look)

The CLI runs without any block, with the AWS_* variables for credentials, bytecode caches allowed (as in
a user's install, whatever PYTHONDONTWRITEBYTECODE says here), its stderr on a pseudo-terminal
(so its progress bar is drawn, as in a shell) and its stdout piped. `--code DIR` runs the CLI from another
checkout of the package (PYTHONPATH), for a before/after comparison on the same machine. Loopback only:
MinIO and the result server run here on 127.0.0.1. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import CURL_TAR, WORK, build_mixed_folder, checker, empty, paired, print_table, ratio_row  # noqa: E402

from prefect_bacalhau_publish.testing import MinioServer, ResultServerProcess, free_port, running_minio  # noqa: E402

CLI = str(Path(sys.executable).parent / "prefect-bacalhau")
UPLOAD = (
    "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')"
    ".upload_file(sys.argv[2], sys.argv[3], sys.argv[4])"
)
"""The baselines' uploader: the script a user writes around boto3's `upload_file`, started fresh."""


class Runner:
    """Runs whole commands in one environment (credentials, data folder, the CLI's code)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *argv: str, shell: bool = False) -> str:
        """Run `argv` (one bash line when `shell`) to completion and return its stdout; exit on failure.

        The CLI's stderr is a pseudo-terminal, as in a user's shell, so its progress bar is drawn."""
        cmd = ["bash", "-c", f"set -o pipefail; {argv[0]}", *argv[1:]] if shell else list(argv)
        master, terminal = pty.openpty()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=terminal, env=self.env)
        finally:
            os.close(terminal)
        shown: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(master, shown))
        reader.start()
        assert proc.stdout is not None
        out = proc.stdout.read()
        code = proc.wait()
        reader.join()
        if code != 0:
            raise SystemExit(f"{' '.join(argv)[:300]} failed ({code}): {b''.join(shown)[-2000:]!r}")
        return out.decode()

    def job(self, *argv: str, shell: bool = False) -> Callable[[], None]:
        """The run of `argv`, to time."""

        def run() -> None:
            self(*argv, shell=shell)

        return run


def _drain(master: int, into: list[bytes]) -> None:
    """Read a pseudo-terminal until its last writer is gone, then close it."""
    try:
        while chunk := os.read(master, 65536):
            into.append(chunk)
    except OSError:  # EIO: the command and its children have exited
        pass
    finally:
        os.close(master)


def startup_row(name: str, times: list[float], bare: list[float], target: float) -> str:
    median = statistics.median(times)
    verdict = "✅" if median <= target else "❌"
    return (
        f"| {name} | {median:.3f} | {statistics.median(bare):.3f} (python -c pass) "
        f"| target ≤ {target} s {verdict} (n={len(times)}) |"
    )


def startups(run: Runner, tiny_spec: Path, work: Path, runs: int) -> list[str]:
    """S1, S2, each alternating with a bare interpreter start."""
    dest = work / "tiny-got"
    n = max(5, runs)
    bare = run.job(sys.executable, "-c", "pass")
    helped, bare_a = paired(n, run.job(CLI, "--help"), bare)
    tiny_get = run.job(CLI, "get", str(tiny_spec), "-o", str(dest))
    got, bare_b = paired(n, tiny_get, bare, cleanup=lambda: shutil.rmtree(dest, ignore_errors=True))
    return [
        startup_row("S1 prefect-bacalhau --help (whole process)", helped, bare_a, 0.3),
        startup_row("S2 prefect-bacalhau get, tiny local result (whole process)", got, bare_b, 0.8),
    ]


def s3_target(minio: MinioServer) -> tuple[Any, str, str]:
    """A fresh bucket: a boto3 client, the bucket's name, and a (gzip) publish target in it."""
    client: Any = minio.client()
    bucket = f"cli-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket, f"s3://{bucket}/cli/{{executionID}},opt=endpoint={minio.endpoint}"


def w1(run: Runner, minio: MinioServer, folder: Path, size: int, runs: int, work: Path) -> list[str]:
    client, bucket, target = s3_target(minio)
    archive = work / "baseline.tar.gz"
    ours = run.job(CLI, "publish", str(folder), "-p", target)

    def upload() -> None:
        run(sys.executable, "-c", UPLOAD, minio.endpoint, str(archive), bucket, f"base/{uuid.uuid4()}.tar.gz")

    def tar_pigz() -> None:
        run(f"tar cf - -C {folder} . | pigz -1 -p 2 > {archive}", shell=True)
        upload()

    def tar_czf() -> None:
        run("tar", "czf", str(archive), "-C", str(folder), ".")
        upload()

    def empty_bucket() -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})

    name = f"W1b CLI {size} MiB publish gzip vs tar \\| pigz -1 -p 2 + upload script"
    rows = [ratio_row(name, *paired(runs, ours, tar_pigz, cleanup=empty_bucket), target=0.6)]
    # the page cache is warm from W1b: no warm-up for the slow tar czf
    a, c = paired(runs, ours, tar_czf, warmup_base=False, cleanup=empty_bucket)
    rows.append(ratio_row(f"W1a CLI {size} MiB publish gzip vs tar czf + upload script", a, c, target=0.1))
    return rows


def w4(run: Runner, folder: Path, size: int, runs: int, storage: Path) -> list[str]:
    archive = storage / "baseline.tar.gz"
    ours = run.job(CLI, "publish", str(folder), "-p", "local")
    tar_pigz = run.job(f"tar cf - -C {folder} . | pigz -1 -p 2 > {archive}", shell=True)
    tar_czf = run.job("tar", "czf", str(archive), "-C", str(folder), ".")
    a, b = paired(runs, ours, tar_pigz, cleanup=lambda: empty(storage))
    rows = [ratio_row(f"W4b CLI {size} MiB publish -p local vs tar cf \\| pigz -1 -p 2", a, b, target=0.6)]
    a2, c = paired(runs, ours, tar_czf, warmup_base=False, cleanup=lambda: empty(storage))
    rows.append(ratio_row(f"W4a CLI {size} MiB publish -p local vs tar czf", a2, c, target=0.1))
    return rows


def w5(run: Runner, name: str, spec: Path, url: str, folder: Path, runs: int, *flags: str) -> str:
    """`get` of `spec` vs curl | tar of `url`, each into a fresh folder checked against `folder`."""
    dest = spec.parent / "w5-dest"

    def base() -> None:
        dest.mkdir()
        run(CURL_TAR, "curl-tar", url, str(dest), shell=True)

    ours = run.job(CLI, "get", str(spec), "-o", str(dest), *flags)
    a, b = paired(runs, ours, base, cleanup=checker(folder, dest))
    return ratio_row(name, a, b, target=0.6)


def s3_spec(run: Runner, minio: MinioServer, folder: Path, work: Path) -> tuple[Path, str]:
    """Publish `folder` to S3 with the CLI: its spec file, and a presigned URL of the archive (for curl)."""
    client, _, target = s3_target(minio)
    spec = work / "w5-s3.json"
    spec.write_text(run(CLI, "publish", str(folder), "-p", target))
    params = json.loads(spec.read_text())["Params"]
    request = {"Bucket": params["Bucket"], "Key": params["Key"]}
    url: str = client.generate_presigned_url("get_object", Params=request, ExpiresIn=7200)
    return spec, url


def local_spec(run: Runner, folder: Path, server: ResultServerProcess, name: str) -> tuple[Path, str]:
    """Publish `folder` with `publish -p local`, point its spec at `server` (`readdress`); the spec and URL."""
    spec = server.log.parent / f"{name}.json"
    spec.write_text(run(CLI, "publish", str(folder), "-p", "local"))
    run(CLI, "readdress", "http://127.0.0.1:6001", server.base_url, str(spec))
    return spec, json.loads(spec.read_text())["Params"]["URL"]


def tiny_result(root: Path) -> Path:
    (root / "outputs").mkdir(parents=True)
    (root / "outputs" / "answer.txt").write_text("42\n")
    (root / "stdout").write_text("tiny\n")
    (root / "exitCode").write_text("0")
    return root


def environment(minio: MinioServer, data: Path, code: Path | None) -> dict[str, str]:
    """Credentials for the default chain, and the default storage folder's parent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PBP_"))}
    # A user's install keeps its bytecode caches; this sandbox's PYTHONDONTWRITEBYTECODE=1 would make every
    # CLI start compile the package from source (the warm-up run writes the caches).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        AWS_ACCESS_KEY_ID=minio.user,
        AWS_SECRET_ACCESS_KEY=minio.password,
        AWS_REGION="us-east-1",
        XDG_DATA_HOME=str(data),
        NO_PROXY="127.0.0.1,localhost",
    )
    if code is not None:
        env["PYTHONPATH"] = str(code.resolve())
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=WORK)
    parser.add_argument("--only", default="S,W1,W4,W5", help="comma list of S, W1, W4, W5")
    parser.add_argument(
        "--code", type=Path, help="run the CLI from this checkout of the package (PYTHONPATH)"
    )
    args = parser.parse_args()
    if shutil.which("pigz") is None or shutil.which("curl") is None:
        raise SystemExit("pigz and curl are needed for the baselines: apt-get install pigz curl")
    args.dir.mkdir(parents=True, exist_ok=True)
    only, size, runs = set(args.only.split(",")), args.size_mib, args.runs
    folder = build_mixed_folder(args.dir, size)
    rows: list[str] = []
    with running_minio(args.dir) as minio, tempfile.TemporaryDirectory(prefix="cli-", dir=args.dir) as tmp:
        work = Path(tmp)
        data = work / "data"  # XDG_DATA_HOME: the default storage folder of a blockless publish is in it
        storage = data / "prefect-bacalhau-publish" / "results"
        storage.mkdir(parents=True, mode=0o700)
        run = Runner(environment(minio, data, args.code))
        with ResultServerProcess(storage, work / "serve.log", free_port()) as server:
            if "S" in only:
                tiny, _ = local_spec(run, tiny_result(work / "tiny"), server, "tiny")
                rows += startups(run, tiny, work, runs)
            if "W1" in only:
                rows += w1(run, minio, folder, size, runs, work)
            if "W5" in only:
                spec, url = s3_spec(run, minio, folder, work)
                rows.append(w5(run, f"W5 CLI {size} MiB get S3 vs curl \\| tar xz", spec, url, folder, runs))
                name = f"W5 CLI {size} MiB get --presigned S3 vs curl \\| tar xz"
                rows.append(w5(run, name, spec, url, folder, runs, "--presigned"))
                spec, url = local_spec(run, folder, server, "w5-local")
                name = f"W5 CLI {size} MiB get local URL vs curl \\| tar xz"
                rows.append(w5(run, name, spec, url, folder, runs))
        if "W4" in only:
            empty(storage)
            rows += w4(run, folder, size, runs, storage)
    where = f", CLI code from {args.code}" if args.code else ""
    print_table(f"CLI, whole processes, {size} MiB{where}", rows)


if __name__ == "__main__":
    main()
