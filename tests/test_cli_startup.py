"""Start-up as users run the CLI: fresh processes, and what each path imports (`python -X importtime`).

`--help`, `publish -p local` and `get` of a local result import neither Prefect nor boto3/botocore, obstore or
the Kubo client; S3 paths import boto3 but not Prefect; IPFS paths import the Kubo client but neither Prefect
nor an S3 client. Prefect comes in only when a block, an artifact key or a flow-run id is named. Timings live in bench/bench_cli.py; the bound here only catches a pathological start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefect_bacalhau_publish.kubo.node import KuboNode
from prefect_bacalhau_publish.publishers.ipfs import publish_folder
from prefect_bacalhau_publish.testing import KuboServer, MinioServer, ResultServerProcess, free_port

from .test_s3 import tree

HEAVY = (
    "prefect",
    "prefect_aws",
    "boto3",
    "botocore",
    "obstore",
    "ipfshttpclient",
    "prefect_bacalhau_publish.kubo",
)
NOT_FOR_S3 = ("prefect", "prefect_aws", "ipfshttpclient", "prefect_bacalhau_publish.kubo")
SANITY_SECONDS = 3.0
"""Generous: `--help` takes about 0.2 s and a tiny `get` about 0.6 s on a busy 2-core machine."""

_ENTRY = "import sys; from prefect_bacalhau_publish.cli import main; sys.argv[0] = 'prefect-bacalhau'; main()"


def environ(changes: dict[str, str | None] | None) -> dict[str, str]:
    """This process's environment with `changes` applied (None removes a variable)."""
    merged: dict[str, str | None] = {**os.environ, **(changes or {})}
    return {name: value for name, value in merged.items() if value is not None}


def cli(
    *args: str, env: dict[str, str | None] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI's entry point in a fresh interpreter; the result and every module it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _ENTRY, *args],
        capture_output=True,
        text=True,
        env=environ(env),
        check=False,
        timeout=120,
    )
    imported = {
        line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")
    }
    imported.discard("package")  # the header line
    return done, imported


def loaded(imported: set[str], packages: tuple[str, ...]) -> list[str]:
    """The modules of `imported` that are, or are inside, one of `packages`."""
    return sorted(m for m in imported if any(m == p or m.startswith(p + ".") for p in packages))


def errors(done: subprocess.CompletedProcess[str]) -> str:
    return "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))


def timed(*args: str, env: dict[str, str | None] | None = None) -> float:
    """Wall seconds of one plain run (no -X importtime), which must succeed."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _ENTRY, *args],
        capture_output=True,
        env=environ(env),
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - started


def test_help_imports_nothing_heavy() -> None:
    done, imported = cli("--help")
    assert done.returncode == 0, errors(done)
    assert "publish" in done.stdout and "get" in done.stdout
    assert loaded(imported, HEAVY) == []
    assert "pydantic" not in imported and "httpx" not in imported  # not even the spec models
    assert timed("--help") < SANITY_SECONDS


def test_package_import_is_lazy() -> None:
    code = (
        "import sys, prefect_bacalhau_publish as p\n"
        "assert 'prefect' not in sys.modules and 'boto3' not in sys.modules, 'eager'\n"
        "assert p.SpecError.__module__ == 'prefect_bacalhau_publish.errors'\n"
        "assert p.PublishedResult.__module__ == 'prefect_bacalhau_publish.specs'\n"
        "assert 'prefect' not in sys.modules, 'specs pulled Prefect in'\n"
        "assert set(p.__all__) <= set(dir(p))\n"
        "print(p.S3Storage.__module__, p.get_result.name, 'prefect' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["prefect_bacalhau_publish.blocks", "get_result", "True"]


def test_local_publish_and_get_import_nothing_heavy(result_dir: Path, tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}  # the default storage folder, as no block names one
    done, imported = cli("publish", str(result_dir), "-p", "local", "--job-id", "j-start", env=env)
    assert done.returncode == 0, errors(done)
    assert loaded(imported, HEAVY) == []
    url = json.loads(done.stdout)["Params"]["URL"]
    storage = tmp_path / "data" / "prefect-bacalhau-publish" / "results"
    assert (storage / url.rsplit("/", 1)[1]).is_file()

    port = free_port()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps({"Type": "urlDownload", "Params": {"URL": url.replace(":6001/", f":{port}/")}})
    )
    with ResultServerProcess(storage, tmp_path / "serve.log", port):
        done, imported = cli("get", str(spec_file), "-o", str(tmp_path / "got"))
        assert done.returncode == 0, errors(done)
        assert loaded(imported, HEAVY) == []
        assert tree(tmp_path / "got") == tree(result_dir)
        assert timed("get", str(spec_file), "-o", str(tmp_path / "again")) < SANITY_SECONDS
    assert tree(tmp_path / "again") == tree(result_dir)


@pytest.mark.parametrize("presigned", [False, True])
def test_s3_publish_and_get_leave_prefect_out(
    result_dir: Path, minio: MinioServer, bucket: str, tmp_path: Path, presigned: bool
) -> None:
    env: dict[str, str | None] = {
        "AWS_ACCESS_KEY_ID": minio.user,
        "AWS_SECRET_ACCESS_KEY": minio.password,
        "AWS_REGION": "us-east-1",
        "PBP_JOURNAL": None,  # the journal of unaborted uploads is found in PREFECT_HOME without Prefect
    }
    target = f"s3://{bucket}/start/{{jobID}},opt=endpoint={minio.endpoint}"
    done, imported = cli("publish", str(result_dir), "-p", target, env=env)
    assert done.returncode == 0, errors(done)
    assert loaded(imported, NOT_FOR_S3) == []
    assert "obstore" not in imported  # one archive: boto3 only
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(done.stdout)
    args = ["get", str(spec_file), "-o", str(tmp_path / "got"), *(["--presigned"] if presigned else [])]
    done, imported = cli(*args, env=env)
    assert done.returncode == 0, errors(done)
    assert loaded(imported, NOT_FOR_S3) == []
    assert tree(tmp_path / "got") == tree(result_dir)


def test_plain_s3_publish_and_get_with_keys_in_the_environment_leave_boto3_out(
    result_dir: Path, minio: MinioServer, bucket: str, tmp_path: Path
) -> None:
    """A plain result goes up and comes back through obstore alone: with the keys and region in the
    environment (what boto3's chain would take first), no boto3 session is needed, so boto3 is not imported
    (botocore's exception classes are, for error messages)."""
    env: dict[str, str | None] = {
        "AWS_ACCESS_KEY_ID": minio.user,
        "AWS_SECRET_ACCESS_KEY": minio.password,
        "AWS_DEFAULT_REGION": "us-east-1",
        "PBP_JOURNAL": None,
    }
    target = f"s3://{bucket}/plain/{{jobID}},opt=endpoint={minio.endpoint},opt=encoding=plain"
    done, imported = cli("publish", str(result_dir), "-p", target, env=env)
    assert done.returncode == 0, errors(done)
    assert loaded(imported, ("boto3", *NOT_FOR_S3)) == []
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(done.stdout)
    done, imported = cli("get", str(spec_file), "-o", str(tmp_path / "got"), env=env)
    assert done.returncode == 0, errors(done)
    assert loaded(imported, ("boto3", *NOT_FOR_S3)) == []
    assert tree(tmp_path / "got") == tree(result_dir)
    # Wrong keys are still refused with a clear error, as through boto3.
    done, imported = cli(
        "get",
        str(spec_file),
        "-o",
        str(tmp_path / "denied"),
        env={**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"},
    )
    assert done.returncode != 0
    assert "SignatureDoesNotMatch" in errors(done) or "credentials" in errors(done).lower(), errors(done)
    assert "wrong-secret" not in done.stderr + done.stdout
    assert not (tmp_path / "denied").exists()


NOT_FOR_IPFS = ("prefect", "prefect_aws", "boto3", "botocore", "obstore", "ipfshttpclient")


@pytest.mark.parametrize("found_by", ["--ipfs-api", "IPFS_PATH"])
def test_ipfs_publish_and_get_leave_prefect_out(
    result_dir: Path, kubo: KuboServer, tmp_path: Path, found_by: str
) -> None:
    """Without a block the node comes from --ipfs-api, or from the running daemon's $IPFS_PATH/api file (as
    the `ipfs` command finds it); neither path imports Prefect (3 s of start-up) or an S3 client."""
    if found_by == "--ipfs-api":
        flags, env = ["--ipfs-api", kubo.api_url], {"IPFS_PATH": str(tmp_path / "no-repo")}
    else:
        flags, env = [], {"IPFS_PATH": str(kubo.repo_dir)}
        assert (kubo.repo_dir / "api").read_text().strip().endswith(kubo.api_url.rsplit(":", 1)[1])
    done, imported = cli("publish", str(result_dir), "-p", "ipfs", *flags, env=env)
    assert done.returncode == 0, errors(done)
    assert loaded(imported, (*NOT_FOR_IPFS, "yaml")) == []  # no YAML read, none imported
    cid = json.loads(done.stdout)["Params"]["CID"]
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(done.stdout)
    done, imported = cli("get", str(spec_file), "-o", str(tmp_path / "got"), *flags, env=env)
    assert done.returncode == 0, errors(done)
    assert loaded(imported, (*NOT_FOR_IPFS, "yaml")) == []  # the spec is JSON
    assert tree(tmp_path / "got") == tree(result_dir)
    assert cid.startswith("bafy")


def test_ipfs_get_names_an_unreachable_node(result_dir: Path, tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"Type": "ipfs", "Params": {"CID": "bafkqaaa"}}))
    port = free_port()
    done, _ = cli(
        "get", str(spec_file), "-o", str(tmp_path / "got"), "--ipfs-api", f"/ip4/127.0.0.1/tcp/{port}"
    )
    assert done.returncode == 1
    assert f"cannot reach the Kubo RPC API at http://127.0.0.1:{port}" in errors(done)
    assert not (tmp_path / "got").exists()


_FIRST_BYTES = """
import sys
from prefect_bacalhau_publish.cli import main
from prefect_bacalhau_publish.progress import listening

first: list[list[str]] = []


def on_bytes(nbytes: int) -> None:
    if not first:  # which heavy modules were loaded when the publish read its first bytes
        first.append(sorted(m for m in ("pydantic", "rich.console", "prefect_bacalhau_publish.specs") if m in sys.modules))


sys.argv[0] = "prefect-bacalhau"
try:
    with listening(on_bytes):
        main()
finally:
    print("FIRST", first, file=sys.stderr)
"""


def test_ipfs_publish_reads_its_first_bytes_before_the_spec_models_load(
    result_dir: Path, kubo: KuboServer
) -> None:
    """`publish -p ipfs` starts the upload first and imports pydantic, the spec models and Rich while the
    node takes the bytes (0.15 s of a fresh process's start-up); the answer is the same spec."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _FIRST_BYTES,
            "publish",
            str(result_dir),
            "-p",
            "ipfs",
            "--ipfs-api",
            kubo.api_url,
        ],
        capture_output=True,
        text=True,
        env=environ(None),
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "FIRST [[]]" in done.stderr, done.stderr
    spec = json.loads(done.stdout)
    assert list(spec) == ["Type", "Params"] and spec["Type"] == "ipfs"
    assert spec["Params"]["CID"] == publish_folder(result_dir, KuboNode(api_address=kubo.api_url))
