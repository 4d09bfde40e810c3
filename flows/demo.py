"""`make demo`: the chain flow end to end on embedded defaults.

A throwaway Prefect server (ephemeral, in a temp PREFECT_HOME), a MinIO started from the test-server cache
(unless DEMO_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY point at your own S3), the blocks saved,
the two-job chain run, both published specs written to demo-results/, and a `get` of job B's result; then
the partitioned flow (4 executions over date-stamped CSVs, one reduce) with its total checked.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-results"

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pbp-demo-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
sys.path.insert(0, str(ROOT / "flows"))


def main() -> int:
    from prefect_aws import AwsCredentials, MinIOCredentials

    from prefect_bacalhau_publish import S3Storage
    from prefect_bacalhau_publish.testing import running_minio

    bucket = os.environ.get("DEMO_BUCKET", "bacalhau-demo")
    with ExitStack() as stack:
        endpoint = os.environ.get("DEMO_S3_ENDPOINT")
        if endpoint and os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
            credentials: AwsCredentials | MinIOCredentials = AwsCredentials(
                aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            )
            print(f"demo: using your S3 endpoint {endpoint}")
        else:
            print("demo: starting MinIO on 127.0.0.1 (from the test-server cache)...")
            minio = stack.enter_context(running_minio())
            endpoint = minio.endpoint
            credentials = MinIOCredentials(minio_root_user=minio.user, minio_root_password=minio.password)
            os.environ["AWS_ACCESS_KEY_ID"] = minio.user
            os.environ["AWS_SECRET_ACCESS_KEY"] = minio.password
            print(f"demo: MinIO ready at {endpoint}")
        storage = S3Storage(credentials=credentials, endpoint_url=endpoint, region_name="us-east-1")
        client = storage.get_client()
        if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=bucket)
        print("demo: starting a throwaway Prefect server and saving the S3 block 'bacalhau-s3'...")
        storage.save("bacalhau-s3", overwrite=True)

        from chain import chain

        specs = chain(bucket=bucket, s3_block="bacalhau-s3")
        OUT.mkdir(exist_ok=True)
        for name, spec in specs.items():
            path = OUT / f"job-{name}.json"
            path.write_text(json.dumps(spec, indent=2) + "\n")
            print(
                f"\njob {name.upper()} published to s3://{spec['Params']['Bucket']}/{spec['Params']['Key']}"
            )
            print(json.dumps(spec, indent=2))
        dest = OUT / "job-b"
        command = [
            sys.executable,
            "-m",
            "prefect_bacalhau_publish.cli",
            "get",
            str(OUT / "job-b.json"),
            "-o",
            str(dest),
            "--force",
        ]
        print(f"\ndemo: fetching job B's result back: {shlex.join(command[2:])}")
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            print("demo: get failed", file=sys.stderr)
            return 1
        print(f"demo: job B's outputs/sum.txt = {(dest / 'outputs' / 'sum.txt').read_text().strip()}")
        if not partitioned_demo(bucket, storage):
            return 1
        get_a = f".venv/bin/prefect-bacalhau get {OUT / 'job-a.json'} -o ./job-a"
        if "--keep" not in sys.argv:
            print(
                "\nThe demo's S3 server stops now. To fetch results yourself, run `python flows/demo.py --keep`"
                f" and, while it waits, in another shell:\n  {get_a}  (with the AWS_* variables it prints)"
            )
            return 0
        print(
            "\nS3 stays up until you press Ctrl-C. In another shell:\n"
            f"  export AWS_ACCESS_KEY_ID={os.environ['AWS_ACCESS_KEY_ID']} AWS_SECRET_ACCESS_KEY=<the demo password>\n"
            f"  {get_a}\n(the demo MinIO's password is MINIO_PASSWORD in prefect_bacalhau_publish/testing.py)"
        )
        try:
            signal.pause()
        except KeyboardInterrupt:
            print("\ndemo: stopping")
    return 0


def partitioned_demo(bucket: str, storage: object) -> bool:
    """The partitioned flow: 4 executions over date-stamped CSVs, then the reduce; True when the total is right."""
    from partitioned import partitioned

    from prefect_bacalhau_publish import get_result

    print("\ndemo: a partitioned job (4 executions, each on its days of sales/) and its reduce...")
    out = partitioned(bucket=bucket, s3_block="bacalhau-s3", count=4)
    OUT.mkdir(exist_ok=True)
    (OUT / "partitioned.json").write_text(json.dumps(out, indent=2) + "\n")
    dest = OUT / "partitioned-total"
    if dest.exists():
        shutil.rmtree(dest)
    get_result.fn(out["total"], dest, s3=storage)
    total = int((dest / "outputs" / "total.txt").read_text())
    print(f"demo: partitioned total = {total} (expected {out['expected']})")
    return total == out["expected"]


if __name__ == "__main__":
    sys.exit(main())
