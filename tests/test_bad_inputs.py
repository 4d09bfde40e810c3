"""Bad inputs through the library (issue 26), one table: each case's error type and one-line message, on the
real MinIO, Kubo and result server. The CLI's cases are in test_bad_inputs_cli.py."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.blocks import IPFSNode, S3Storage
from prefect_bacalhau_publish.errors import (
    BacalhauPublishError,
    ChecksumMismatchError,
    FetchError,
    IPFSPublishError,
    SpecError,
)
from prefect_bacalhau_publish.jobs import fetch_all
from prefect_bacalhau_publish.naming import render_key
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.resolve import fetch_result, resolve_result
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec
from prefect_bacalhau_publish.testing import KuboServer, MinioServer


@dataclass
class World:
    """What a case may use: the real servers, a bucket holding one gzip and one plain result, a folder."""

    minio: MinioServer
    kubo: KuboServer
    storage: S3Storage
    bucket: str
    gzip: PublishedResult
    plain: PublishedResult
    folder: Path
    tmp: Path


@pytest.fixture()
def world(minio: MinioServer, kubo: KuboServer, s3_storage: S3Storage, bucket: str, tmp_path: Path) -> World:
    folder = tmp_path / "result"
    (folder / "outputs").mkdir(parents=True)
    (folder / "outputs" / "a.txt").write_bytes(b"a" * 1000)
    (folder / "stdout").write_bytes(b"ok\n")

    def spec(encoding: str) -> PublisherSpec:
        params = {"Bucket": bucket, "Key": f"r/{encoding}", "Encoding": encoding}
        return PublisherSpec.model_validate({"Type": "s3", "Params": params})

    ctx = ExecutionContext.new()
    return World(
        minio,
        kubo,
        s3_storage,
        bucket,
        publish_to(folder, spec("gzip"), ctx, s3=s3_storage),
        publish_to(folder, spec("plain"), ctx, s3=s3_storage),
        folder,
        tmp_path,
    )


def with_params(result: PublishedResult, **params: Any) -> PublishedResult:
    doc = result.model_dump(by_alias=True, exclude_none=True)
    doc["Params"].update(params)
    return PublishedResult.model_validate(doc)


def get(world: World, result: PublishedResult, **kwargs: Any) -> Any:
    return fetch_result(result, world.tmp / f"got-{uuid.uuid4().hex[:6]}", s3=world.storage, **kwargs)


def s3_input(bucket: str, key: str) -> dict[str, Any]:
    return {"Source": {"Type": "s3", "Params": {"Bucket": bucket, "Key": key}}, "Target": "/inputs/x"}


def _presigned_by_a_user_without_get(w: World) -> Any:
    signer = w.minio.limited_user(f"nog{uuid.uuid4().hex[:6]}", ["s3:PutObject"], w.bucket)
    return fetch_result(w.gzip, w.tmp / "got", s3=signer, presigned=True)


def _tls_to_plain_http(w: World) -> Any:
    https = w.minio.endpoint.replace("http://", "https://")
    return get(w, with_params(w.gzip, Endpoint=https))


def _non_empty_dest(w: World) -> Any:
    dest = w.tmp / "full"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    unreachable = S3Storage(
        credentials=w.storage.credentials, endpoint_url="http://127.0.0.1:9", region_name="us-east-1"
    )
    return fetch_result(w.gzip, dest, s3=unreachable)  # refused before any request is tried


def _publish(w: World, params: dict[str, Any], job_id: str = "j1") -> Any:
    spec = PublisherSpec.model_validate({"Type": "s3", "Params": params})
    unreachable = S3Storage(
        credentials=w.storage.credentials, endpoint_url="http://127.0.0.1:9", region_name="us-east-1"
    )
    return publish_to(w.folder, spec, ExecutionContext.new(job_id=job_id), s3=unreachable)


def _tampered_archive(w: World) -> Any:
    client = w.storage.get_client()
    key = w.gzip.params.key  # type: ignore[union-attr]
    client.put_object(Bucket=w.bucket, Key=key, Body=b"not the archive")
    return get(w, w.gzip)


def _not_kubo(w: World) -> Any:
    node = IPFSNode(api_address=w.minio.endpoint)  # an HTTP server, but MinIO
    return publish_to(
        w.folder, PublisherSpec.model_validate({"Type": "ipfs"}), ExecutionContext.new(), ipfs=node
    )


Case = tuple[Callable[[World], Any], type[BaseException], str]

CASES: dict[str, Case] = {
    "get-missing-bucket-gzip": (
        lambda w: get(w, with_params(w.gzip, Bucket="no-such-bucket-x")),
        FetchError,
        r"bucket 'no-such-bucket-x' does not exist.*fix Bucket",
    ),
    "get-missing-bucket-plain": (
        lambda w: get(w, with_params(w.plain, Bucket="no-such-bucket-x")),
        FetchError,
        r"bucket 'no-such-bucket-x' does not exist",
    ),
    "input-missing-bucket": (
        lambda w: fetch_all([s3_input("no-such-bucket-x", "data/")], w.tmp / "job", s3=w.storage),
        FetchError,
        r"bucket 'no-such-bucket-x' does not exist",
    ),
    "input-missing-bucket-object": (
        lambda w: fetch_all([s3_input("no-such-bucket-x", "data.csv")], w.tmp / "job", s3=w.storage),
        FetchError,
        r"bucket 'no-such-bucket-x' does not exist",
    ),
    "input-filter-go-refuses": (
        lambda w: fetch_all(
            [
                {
                    "Source": {"Type": "s3", "Params": {"Bucket": w.bucket, "Key": "r/", "Filter": "(a"}},
                    "Target": "/x",
                }
            ],
            w.tmp / "job",
            s3=w.storage,
        ),
        SpecError,
        r"invalid Filter '\(a': error parsing regexp: missing closing \): `\(a`",
    ),
    "get-missing-key": (
        lambda w: get(w, with_params(w.gzip, Key="r/nothing.tar.gz", ChecksumSHA256=None, VersionID=None)),
        FetchError,
        r"no such object.*check Key",
    ),
    "presigned-signer-lacks-get": (
        _presigned_by_a_user_without_get,
        FetchError,
        r"HTTP 403 AccessDenied.*signed the URL.*s3:GetObject",
    ),
    "https-to-plain-http": (
        _tls_to_plain_http,
        FetchError,
        r"speaks plain http, not TLS: write its Endpoint with http://",
    ),
    "endpoint-without-scheme": (
        lambda w: get(w, with_params(w.gzip, Endpoint="127.0.0.1:9000")),
        SpecError,
        r"has no scheme: write http://127\.0\.0\.1:9000",
    ),
    "bucket-name-too-short": (
        lambda w: _publish(w, {"Bucket": "ab", "Key": "k"}),
        SpecError,
        r"bucket name 'ab' is not one S3 accepts",
    ),
    "bucket-name-bad-characters": (
        lambda w: get(w, with_params(w.gzip, Bucket="-bad/name")),
        SpecError,
        r"bucket name '-bad/name' is not one S3 accepts",
    ),
    "job-id-makes-dotdot-key": (
        lambda w: _publish(w, {"Bucket": "fine", "Key": "runs/{jobID}"}, job_id="../../x"),
        SpecError,
        r"S3 key 'runs/\.\./\.\./x\.tar\.gz' is not usable: it has a '\.\.' segment",
    ),
    "key-over-1024-bytes": (
        lambda w: _publish(w, {"Bucket": "fine", "Key": "k" * 1100}),
        SpecError,
        r"over 1024",
    ),
    "get-into-non-empty-folder": (
        _non_empty_dest,
        FetchError,
        r"is not an empty folder: empty it or choose another path",
    ),
    "tampered-archive": (
        _tampered_archive,
        ChecksumMismatchError,
        r"checksum mismatch for s3://.*expected .+, got none \(the object carries no SHA-256",
    ),
    "input-dict-malformed": (
        lambda w: fetch_all([{"Source": {"Type": "s3", "Params": {}}, "Target": "/x"}], w.tmp / "job"),
        SpecError,
        r"invalid input \[0\].*Bucket",
    ),
    "input-wrong-object": (
        lambda w: fetch_all([42], w.tmp / "job"),  # type: ignore[list-item]
        SpecError,
        r"invalid input \[0\]: int",
    ),
    "result-dict-malformed": (
        lambda w: resolve_result({"Type": "s3", "Params": {"Key": "k"}}),
        SpecError,
        r"Bucket",
    ),
    "result-text-malformed": (
        lambda w: resolve_result('{"Type": "s3", "Params": {"Key": "k"}}'),
        SpecError,
        r"Bucket",
    ),
    "ipfs-address-not-kubo": (
        _not_kubo,
        IPFSPublishError,
        r"does not look like a Kubo RPC API|not a Kubo RPC API",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_line(case: str, world: World) -> None:
    action, error, message = CASES[case]
    started = time.monotonic()
    with pytest.raises(error, match=message) as caught:
        action(world)
    assert isinstance(caught.value, BacalhauPublishError), "the package's own error"
    text = str(caught.value)
    assert "\n" not in text and len(text) < 600, text
    assert world.minio.password not in text
    assert time.monotonic() - started < 60
    left = [p.name for p in world.tmp.rglob(".*") if p.name.startswith((".pbp-", ".s3-input-"))]
    assert left == [], "a failure leaves no staging folder behind"
    assert not (world.tmp / "got").exists() or not any((world.tmp / "got").iterdir())


def test_a_failed_get_leaves_a_non_empty_folder_as_it_was(world: World) -> None:
    dest = world.tmp / "full"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FetchError):
        fetch_result(world.gzip, dest, s3=world.storage)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


def test_an_unknown_placeholder_is_kept_and_named(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        key = render_key("ph/{bogus}/{jobid}", context=ExecutionContext.new(job_id="j9"), archive=True)
    assert key == "ph/{bogus}/{jobid}.tar.gz"  # kept as written, as Bacalhau does
    text = caplog.text
    assert "{bogus} is not a placeholder" in text
    assert "{jobid} is not a placeholder" in text and "did you mean {jobID}?" in text


def test_a_get_with_s3_getobject_alone_still_succeeds(world: World) -> None:
    """The missing-bucket probe (HeadBucket, which needs s3:ListBucket) is on the failure path only."""
    reader = world.minio.limited_user(f"ro{uuid.uuid4().hex[:6]}", ["s3:GetObject"], world.bucket)
    out = fetch_result(world.gzip, world.tmp / "ok", s3=reader)
    assert json.dumps(sorted(p.name for p in out.iterdir())) == json.dumps(["outputs", "stdout"])


@pytest.mark.parametrize("encoding", ["gzip", "plain"])
def test_a_failed_publish_to_a_missing_bucket_says_so_and_nothing_else(
    world: World, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No clean-up or abort warning first (nothing was started): one error naming the missing bucket."""
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": "no-such-bucket-y", "Key": "k", "Encoding": encoding}}
    )
    with caplog.at_level(logging.WARNING), pytest.raises(BacalhauPublishError) as caught:
        publish_to(world.folder, spec, ExecutionContext.new(), s3=world.storage)
    assert "bucket 'no-such-bucket-y' does not exist" in str(caught.value)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
