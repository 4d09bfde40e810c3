"""`prefect-bacalhau` as a user runs it: a real process, real MinIO, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.testing import KuboServer, MinioServer

from .test_s3 import tree


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_bacalhau_publish.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=300,
    )


@pytest.fixture()
def aws_env(minio: MinioServer) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": minio.user,
        "AWS_SECRET_ACCESS_KEY": minio.password,
        "AWS_REGION": "us-east-1",
    }


@pytest.mark.parametrize("encoding", ["gzip", "plain"])
def test_publish_then_get(
    result_dir: Path, minio: MinioServer, bucket: str, aws_env: dict[str, str], tmp_path: Path, encoding: str
) -> None:
    target = f"s3://{bucket}/cli/{{jobID}},opt=endpoint={minio.endpoint},opt=encoding={encoding}"
    done = cli("publish", str(result_dir), "-p", target, "--job-id", "j-cli", env=aws_env)
    assert done.returncode == 0, done.stderr
    spec = json.loads(done.stdout)
    assert spec["Params"]["Key"] == ("cli/j-cli.tar.gz" if encoding == "gzip" else "cli/j-cli/")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    dest = tmp_path / "got"
    done = cli("get", str(spec_file), "-o", str(dest), env=aws_env)
    assert done.returncode == 0, done.stderr
    assert tree(dest) == tree(result_dir)


def test_get_refuses_non_empty_destination_unless_force(
    result_dir: Path, minio: MinioServer, bucket: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    done = cli(
        "publish", str(result_dir), "-p", f"s3://{bucket}/f,opt=endpoint={minio.endpoint}", env=aws_env
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(done.stdout)  # JSON is YAML
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    refused = cli("get", str(spec_file), "-o", str(dest), env=aws_env)
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0
    assert "not empty" in refused.stderr and "--force" in refused.stderr
    assert tree(dest) == {"keep.txt": b"mine"}
    forced = cli("get", str(spec_file), "-o", str(dest), "--force", env=aws_env)
    assert forced.returncode == 0, forced.stderr
    assert tree(dest) == tree(result_dir)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"Type": "s3", "Params": {"Key": "x"}}', "Params.Bucket: Field required"),
        ('{"Type": "noop"}', "unsupported published result type 'noop'"),
        ("[1, 2", "neither JSON nor YAML"),
    ],
)
def test_get_bad_spec_one_line_error(tmp_path: Path, content: str, message: str) -> None:
    spec_file = tmp_path / "bad.json"
    spec_file.write_text(content)
    done = cli("get", str(spec_file), "-o", str(tmp_path / "out"))
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_get_wrong_credentials_loses_nothing(
    result_dir: Path, minio: MinioServer, bucket: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    done = cli(
        "publish", str(result_dir), "-p", f"s3://{bucket}/w,opt=endpoint={minio.endpoint}", env=aws_env
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(done.stdout)
    secret = "wrong-secret-9d8c7b"
    failed = cli(
        "get", str(spec_file), "-o", str(tmp_path / "out"), env={**aws_env, "AWS_SECRET_ACCESS_KEY": secret}
    )
    assert failed.returncode == 1
    assert "access denied" in failed.stderr and secret not in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result", "spec.json"]  # no output, no staging


def test_endpoint_without_scheme_names_the_fix(
    result_dir: Path, aws_env: dict[str, str], minio: MinioServer, tmp_path: Path
) -> None:
    bare = minio.endpoint.removeprefix("http://")
    done = cli("publish", str(result_dir), "-p", f"s3://bkt/k,opt=endpoint={bare}", env=aws_env)
    assert done.returncode == 1
    assert f"S3 endpoint '{bare}' has no scheme: write http://{bare}" in done.stderr
    assert "Traceback" not in done.stderr
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"Type": "s3", "Params": {"Bucket": "bkt", "Key": "k/", "Endpoint": bare}}))
    got = cli("get", str(spec), "-o", str(tmp_path / "out"), env=aws_env)
    assert got.returncode == 1 and "has no scheme" in got.stderr and not (tmp_path / "out").exists()


def test_publish_bad_target(result_dir: Path) -> None:
    done = cli("publish", str(result_dir), "-p", "gcs://bucket/key")
    assert done.returncode == 1
    assert "unknown publisher type: 'gcs'" in done.stderr


def test_get_flow_run_merges_results(
    prefect_server: None, s3_storage: Any, bucket: str, tmp_path: Path
) -> None:
    from prefect import flow

    from prefect_bacalhau_publish import run_job
    from prefect_bacalhau_publish.cli import app

    @flow
    def two_jobs() -> None:
        for name in ("one", "two"):
            run_job(
                f"echo {name}; echo {name} > outputs/{name}.txt",
                publisher=f"s3://{bucket}/m/{{jobID}}",
                s3=s3_storage,
            )

    state = two_jobs(return_state=True)
    assert state.is_completed()
    run_id = str(state.state_details.flow_run_id)
    s3_storage.save("cli-merge-s3", overwrite=True)
    dest = tmp_path / "merged"
    with pytest.raises(SystemExit) as ended:
        app(["get", run_id, "-o", str(dest), "--s3-block", "cli-merge-s3"])
    assert ended.value.code in (0, None)
    assert (dest / "stdout").read_text() == "one\ntwo\n"
    assert (dest / "exitCode").read_text() == "00"
    assert (dest / "outputs" / "one.txt").read_text() == "one\n"
    assert (dest / "outputs" / "two.txt").read_text() == "two\n"
    raw = tmp_path / "raw"
    with pytest.raises(SystemExit):
        app(["get", run_id, "-o", str(raw), "--raw", "--s3-block", "cli-merge-s3"])
    assert sorted(p.name for p in (raw / "raw").iterdir()) == ["0", "1"]
    assert (raw / "raw" / "1" / "outputs" / "two.txt").read_text() == "two\n"


def test_serve_get_readdress_prune_local(result_dir: Path, tmp_path: Path) -> None:

    from prefect_bacalhau_publish.blocks import LocalResultServer
    from prefect_bacalhau_publish.publishers import publish_to
    from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec
    from prefect_bacalhau_publish.testing import ResultServerProcess, free_port

    storage = tmp_path / "store"

    first_port, second_port = free_port(), free_port()
    with ResultServerProcess(storage, tmp_path / "serve-1.log", first_port):
        config = LocalResultServer(storage_dir=storage, port=first_port, public_address="loopback")
        result = publish_to(result_dir, PublisherSpec(type="local"), ExecutionContext.new(), local=config)
        spec_file = tmp_path / "local.json"
        spec_file.write_text(json.dumps(result.to_bacalhau()))
        assert result.to_bacalhau()["Params"]["URL"].startswith(f"http://127.0.0.1:{first_port}/e-")
        done = cli("get", str(spec_file), "-o", str(tmp_path / "got"))
        assert done.returncode == 0, done.stderr
        assert tree(tmp_path / "got") == tree(result_dir)
    with ResultServerProcess(storage, tmp_path / "serve-2.log", second_port):  # the node moved
        stale = cli("get", str(spec_file), "-o", str(tmp_path / "stale"))
        assert stale.returncode == 1 and "readdress" in stale.stderr
        done = cli(
            "readdress", f"http://127.0.0.1:{first_port}", f"http://127.0.0.1:{second_port}", str(spec_file)
        )
        assert done.returncode == 0, done.stderr
        done = cli("get", str(spec_file), "-o", str(tmp_path / "again"))
        assert done.returncode == 0, done.stderr
        assert tree(tmp_path / "again") == tree(result_dir)
    done = cli("prune", "--storage-dir", str(storage), "--max-total-bytes", "0")
    assert done.returncode == 0, done.stderr
    assert "1 result(s) removed" in done.stdout
    assert [p for p in storage.iterdir() if p.name.endswith(".tar.gz")] == []
    refused = cli("prune", "--storage-dir", str(storage))
    assert refused.returncode == 1 and "nothing to prune by" in refused.stderr


def test_unreachable_prefect_api_is_one_line(tmp_path: Path) -> None:
    from prefect_bacalhau_publish.testing import free_port

    env = {
        "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",  # nothing listens there
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_CLIENT_MAX_RETRIES": "0",
    }
    done = cli("get", "some-artifact-key", "-o", str(tmp_path / "out"), "--s3-block", "nope", env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-age-hours", "-1"], "max_age: Value error, must not be negative"),
        (["--max-total-bytes", "-1"], "max_total_bytes: Input should be greater than or equal to 0"),
    ],
)
def test_prune_refuses_negative_overrides_and_deletes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    storage = tmp_path / "results"
    storage.mkdir()
    (storage / "e-keep.tar.gz").write_bytes(b"kept")
    done = cli("prune", "--storage-dir", str(storage), *args)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (storage / "e-keep.tar.gz").read_bytes() == b"kept"


def test_prune_of_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    done = cli("prune", "--storage-dir", str(tmp_path / "nope"), "--max-age-hours", "1")
    assert done.returncode == 1
    assert "does not exist or is not a folder: check --storage-dir" in done.stderr


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_progress_line_on_a_terminal_counts_up_to_the_total(
    result_dir: Path, kubo: KuboServer, tmp_path: Path
) -> None:
    """On a terminal (`TTY_COMPATIBLE=1`: Rich's switch, as a pty would be), publish and get draw a progress
    line that knows the transfer's total, so it can show the time left, and ends at it."""
    (result_dir / "outputs" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    terminal = {"TTY_COMPATIBLE": "1", "COLUMNS": "120"}
    done = cli("publish", str(result_dir), "-p", "ipfs", "--ipfs-api", kubo.api_url, env=terminal)
    assert done.returncode == 0, done.stderr
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(_ANSI.sub("", done.stdout))
    lines = _ANSI.sub("", done.stderr).replace("\r", "\n").splitlines()
    drawn = [line for line in lines if "publishing" in line and " MB " in line]
    assert drawn and re.search(r" ([\d.]+)/\1 MB ", drawn[-1]), lines  # ends at its total, e.g. 3.1/3.1 MB
    assert all("/?" not in line for line in drawn), drawn
    done = cli("get", str(spec_file), "-o", str(tmp_path / "got"), "--ipfs-api", kubo.api_url, env=terminal)
    assert done.returncode == 0, done.stderr
    lines = _ANSI.sub("", done.stderr).replace("\r", "\n").splitlines()
    drawn = [line for line in lines if "result 1/1 (ipfs)" in line and " MB " in line]
    assert drawn and re.search(r" ([\d.]+)/\1 MB ", drawn[-1]), lines
    assert tree(tmp_path / "got") == tree(result_dir)
