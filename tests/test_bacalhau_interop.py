"""Our specs and archives checked against Bacalhau v1.9.3's own functions (tests/interop, built in Go)."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.archive import extract_archive, write_archive
from prefect_bacalhau_publish.naming import render_key
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.specs import (
    ExecutionContext,
    PublishedResult,
    PublisherSpec,
    parse_publisher_string,
)
from prefect_bacalhau_publish.testing import binary


def bacalhau(*args: str) -> Any:
    done = subprocess.run(
        [str(binary("bacalhau-interop")), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return json.loads(done.stdout)


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_published_result_accepted_by_bacalhau_s3_source_decoder(
    result_dir: Path, s3_storage: Any, versioned_bucket: str
) -> None:
    ctx = ExecutionContext.new(job_id="j-interop")
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": versioned_bucket, "Key": "i/{jobID}"}}
    )
    result = publish_to(result_dir, spec, ctx, s3=s3_storage)
    source = result.to_input_source("/inputs/prev").to_bacalhau()["Source"]
    assert source["Params"]["Extract"] is True
    decoded = bacalhau("decode-source", json.dumps(source))
    params = result.to_bacalhau()["Params"]
    for name in ("Bucket", "Key", "Region", "Endpoint", "VersionID", "ChecksumSHA256"):
        assert decoded[name] == params[name], name


def test_plain_result_with_its_manifest_checksum_accepted_by_bacalhau(
    result_dir: Path, s3_storage: Any, bucket: str
) -> None:
    """A plain result's spec carries its manifest's ChecksumSHA256 on a prefix key; Bacalhau decodes it as
    is (and its explodeKey, pkg/storage/s3/storage.go, checks ChecksumSHA256 only for a single object)."""
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "p/{jobID}", "Encoding": "plain"}}
    )
    result = publish_to(result_dir, spec, ExecutionContext.new(job_id="j-plain"), s3=s3_storage)
    source = result.to_input_source("/inputs/prev").to_bacalhau()["Source"]
    decoded = bacalhau("decode-source", json.dumps(source))
    params = result.to_bacalhau()["Params"]
    assert params["Key"] == "p/j-plain/" and params["ChecksumSHA256"]
    for name in ("Bucket", "Key", "Region", "Endpoint", "ChecksumSHA256"):
        assert decoded[name] == params[name], name


def test_publisher_spec_accepted_by_bacalhau() -> None:
    ours = PublisherSpec.model_validate(
        {
            "type": "S3",
            "params": {
                "bucket": "b",
                "key": "k/{jobID}",
                "endpoint": "http://127.0.0.1:9000",
                "encoding": "plain",
            },
        }
    )
    decoded = bacalhau("decode-publisher", json.dumps(ours.to_bacalhau()))
    assert decoded == {
        "Bucket": "b",
        "Key": "k/{jobID}",
        "Endpoint": "http://127.0.0.1:9000",
        "Region": "",
        "Encoding": "plain",
    }


def test_bacalhau_rejects_what_we_reject() -> None:
    with pytest.raises(
        RuntimeError, match=re.escape("invalid s3 params. encoding must be either 'plain' or 'gzip'")
    ):
        bacalhau(
            "decode-publisher",
            json.dumps({"Type": "s3", "Params": {"Bucket": "b", "Key": "k", "Encoding": "zstd"}}),
        )
    with pytest.raises(
        ValueError, match=re.escape("invalid s3 params. encoding must be either 'plain' or 'gzip'")
    ):
        PublisherSpec.model_validate(
            {"Type": "s3", "Params": {"Bucket": "b", "Key": "k", "Encoding": "zstd"}}
        )


@pytest.mark.parametrize(
    "pattern",
    [
        "results/{jobID}",
        "{nodeID}/{executionID}/",
        "a.tar.gz",
        "{jobid}/{unknown}",
        "x/{jobID}{jobID}.tgz",
        "",
    ],
)
@pytest.mark.parametrize("archive", [True, False])
def test_render_key_matches_parse_published_key(pattern: str, archive: bool) -> None:
    ctx = ExecutionContext(job_id="j-1", execution_id="e-2", node_id="n-3", published_at=datetime.now(UTC))
    theirs = bacalhau("parse-key", pattern, "j-1", "e-2", "n-3", str(archive).lower())
    assert render_key(pattern, context=ctx, archive=archive) == theirs


def test_date_and_time_placeholders_have_bacalhau_layout() -> None:
    before = datetime.now(UTC)
    theirs = bacalhau("parse-key", "{date}/{time}", "j", "e", "n", "true")
    ours = render_key("{date}/{time}", context=ExecutionContext.new(published_at=before), archive=True)
    assert len(theirs) == len(ours) == len("20230926/140530.tar.gz")
    assert theirs[:8] == ours[:8] or theirs[:8] > ours[:8]  # same day unless midnight passed in between


@pytest.mark.parametrize(
    "text",
    [
        "ipfs",
        "local",
        "s3://MyBucket/out/{jobID},opt=endpoint=http://127.0.0.1:9000,opt=region=us-east-1",
        "s3://b/k,option=encoding=plain",
        "target=s3://b/key",
    ],
)
def test_cli_publisher_syntax_matches_bacalhau(text: str) -> None:
    theirs = PublisherSpec.model_validate(bacalhau("publisher-opt", text))
    assert parse_publisher_string(text) == theirs


def test_job_spec_sections_match_bacalhau(tmp_path: Path) -> None:
    from prefect_bacalhau_publish.specs import parse_job_spec

    from .test_specs import JOB_YAML

    path = tmp_path / "job.yaml"
    path.write_text(JOB_YAML)
    theirs = bacalhau("job", str(path))
    ours = parse_job_spec(JOB_YAML)
    assert [t["Name"] for t in theirs] == list(ours)
    for task in theirs:
        io = ours[task["Name"]]
        assert io.publisher == PublisherSpec.model_validate(task["Publisher"])
        assert [s.to_bacalhau() for s in io.inputs] == [
            {"Source": s["Source"], "Target": s["Target"]} for s in task["InputSources"] or []
        ]
        assert [(p.name, p.path) for p in io.result_paths] == [
            (p["Name"], p["Path"]) for p in task["ResultPaths"] or []
        ]


def test_our_archive_extracts_with_bacalhau_reader(result_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "ours.tar.gz"
    with open(archive, "wb") as out:
        write_archive(result_dir, out)
    dest = tmp_path / "bacalhau-extracted"
    dest.mkdir()
    assert bacalhau("decompress", str(archive), str(dest)) == "ok"
    assert tree(dest) == tree(result_dir)


def test_bacalhau_archive_extracts_with_ours(result_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "theirs.tar.gz"
    assert bacalhau("compress", str(result_dir), str(archive)) == "ok"
    dest = tmp_path / "ours-extracted"
    extract_archive(archive, dest)  # Bacalhau's writer starts with a "." entry, then paths relative to it
    assert tree(dest) == tree(result_dir)


def test_result_round_trip_through_bacalhau_json(result_dir: Path) -> None:
    spec = {"Type": "urlDownload", "Params": {"URL": "http://127.0.0.1:6001/e-1.tar.gz"}}
    assert PublishedResult.model_validate(spec).to_bacalhau() == spec
