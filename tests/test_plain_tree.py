"""What a plain S3 result keeps (issue 22): modes as `x-amz-meta-mode`, empty folders as `name/` markers,
inside links as their target's bytes, and refusals before the first upload, on the real MinIO."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import S3PublishError
from prefect_bacalhau_publish.manifest import manifest_key
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.publishers.s3_plain import MAX_KEY_BYTES, plan_tree
from prefect_bacalhau_publish.resolve import fetch_result
from prefect_bacalhau_publish.sources import fetch_source
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec, SourceSpec


def plain_spec(bucket: str, key: str) -> PublisherSpec:
    return PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": key, "Encoding": "plain"}}
    )


def keys_under(s3_client: Any, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def awkward(root: Path) -> Path:
    (root / "outputs" / "empty" / "inner").mkdir(parents=True)
    (root / "outputs" / "keep").mkdir()
    (root / "outputs" / "keep" / "x").write_bytes(b"x")
    script = root / "outputs" / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    secret = root / "outputs" / "secret"
    secret.write_bytes(b"s")
    secret.chmod(0o600)
    (root / "outputs" / "alias.sh").symlink_to("run.sh")
    (root / "stdout").write_bytes(b"hi\n")
    return root


def perms(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_modes_markers_and_inside_links_are_stored_and_restored(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    folder = awkward(tmp_path / "r")
    published = publish_to(folder, plain_spec(bucket, "p/"), ExecutionContext.new(), s3=s3_storage)
    assert keys_under(s3_client, bucket) == [
        "p.manifest.json",
        "p/outputs/alias.sh",
        "p/outputs/empty/inner/",  # only the empty folder gets a marker: its parent is implied
        "p/outputs/keep/x",
        "p/outputs/run.sh",
        "p/outputs/secret",
        "p/stdout",
    ]
    head = s3_client.head_object(Bucket=bucket, Key="p/outputs/run.sh")
    assert head["Metadata"] == {"mode": "100755"}  # rclone's convention: octal st_mode
    assert s3_client.head_object(Bucket=bucket, Key="p/outputs/secret")["Metadata"] == {"mode": "100600"}
    marker = s3_client.get_object(Bucket=bucket, Key="p/outputs/empty/inner/")
    assert marker["Body"].read() == b"" and marker["ContentLength"] == 0
    alias = s3_client.get_object(Bucket=bucket, Key="p/outputs/alias.sh")
    assert alias["Body"].read() == b"#!/bin/sh\necho hi\n" and alias["Metadata"] == {"mode": "100755"}
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key("p/"))["Body"].read())
    assert doc["Folders"] == ["outputs/empty/inner"]
    assert {f["Path"]: f["Mode"] for f in doc["Files"]}["outputs/secret"] == "100600"

    out = fetch_result(published, tmp_path / "got", s3=s3_storage)
    assert (out / "outputs" / "empty" / "inner").is_dir()
    assert list((out / "outputs" / "empty" / "inner").iterdir()) == []
    assert perms(out / "outputs" / "run.sh") == 0o755
    assert perms(out / "outputs" / "secret") == 0o600
    assert perms(out / "outputs" / "alias.sh") == 0o755
    assert not (out / "outputs" / "alias.sh").is_symlink()  # stored as its target's bytes
    assert (out / "outputs" / "alias.sh").read_bytes() == (folder / "outputs" / "run.sh").read_bytes()
    assert perms(out / "stdout") == perms(folder / "stdout")


def test_a_prefix_without_manifest_restores_modes_and_markers_from_the_objects(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    """As rclone writes a folder (`--metadata`, `--s3-directory-markers`): read through the listing path."""
    s3_client.put_object(Bucket=bucket, Key="f/tool", Body=b"#!/bin/sh\n", Metadata={"mode": "100750"})
    s3_client.put_object(Bucket=bucket, Key="f/plain", Body=b"p")  # no metadata: the default mode
    s3_client.put_object(Bucket=bucket, Key="f/odd", Body=b"o", Metadata={"mode": "40755"})  # not a file's
    s3_client.put_object(Bucket=bucket, Key="f/dir/", Body=b"")
    source = SourceSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": "f/"}})
    dest = fetch_source(source, tmp_path / "in", s3=s3_storage)
    assert perms(dest / "tool") == 0o750
    default = 0o666 & ~_umask()
    assert perms(dest / "plain") == default
    assert perms(dest / "odd") == default
    assert (dest / "dir").is_dir()


def _umask() -> int:
    """The process umask, read without changing it (from /proc, as the kernel reports it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask in /proc/self/status")


def test_a_setuid_mode_is_never_restored(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    s3_client.put_object(Bucket=bucket, Key="s/x", Body=b"x", Metadata={"mode": "104755"})
    source = SourceSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": "s/"}})
    dest = fetch_source(source, tmp_path / "in", s3=s3_storage)
    assert stat.S_IMODE((dest / "x").stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("make", "refusal"),
    [
        (lambda r: (r / "outputs" / "host").symlink_to("/etc/hostname"), r"'outputs/host'.*absolute path"),
        (lambda r: (r / "outputs" / "up").symlink_to("../../x"), r"'outputs/up'.*resolves outside"),
        (lambda r: (r / "outputs" / "dirlink").symlink_to("."), r"'outputs/dirlink'.*link to a folder"),
        (lambda r: os.mkfifo(r / "outputs" / "pipe"), r"'outputs/pipe'.*FIFO"),
        (
            lambda r: (Path(os.fsdecode(bytes(r / "outputs") + b"/caf\xe9.txt"))).write_bytes(b"x"),
            r"'outputs/caf\\xe9.txt'.*not valid UTF-8",
        ),
        (
            lambda r: (r / "outputs").joinpath(*(c * 250 for c in "defg"), "h" * 20).mkdir(parents=True),
            r"over S3's limit of 1024",
        ),
    ],
    ids=["absolute-link", "escaping-link", "folder-link", "fifo", "non-utf8", "long-key"],
)
def test_refused_before_the_first_upload_naming_the_path_inside_the_result(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, make: Any, refusal: str
) -> None:
    folder = tmp_path / "r"
    (folder / "outputs").mkdir(parents=True)
    (folder / "outputs" / "fine.txt").write_bytes(b"fine")
    make(folder)
    with pytest.raises(S3PublishError, match=refusal) as caught:
        publish_to(folder, plain_spec(bucket, "x/"), ExecutionContext.new(), s3=s3_storage)
    assert str(tmp_path) not in str(caught.value)
    assert keys_under(s3_client, bucket) == []  # nothing was sent


def test_key_limit_counts_the_prefix_in_utf8_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    name = "é" * 100 + "/" + "é" * 99  # 399 bytes, 2 of them for each é
    (folder / name).parent.mkdir()
    (folder / name).write_bytes(b"x")
    assert plan_tree(folder, "p" * (MAX_KEY_BYTES - 399)).files[0].key.endswith(name)
    with pytest.raises(S3PublishError, match="1025 bytes"):
        plan_tree(folder, "p" * (MAX_KEY_BYTES - 398))


def test_a_plain_result_published_before_modes_were_kept_still_fetches(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    """A manifest without Mode or Folders (written by an earlier version) is read as before."""
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "a").write_bytes(b"a")
    published = publish_to(folder, plain_spec(bucket, "old/"), ExecutionContext.new(), s3=s3_storage)
    doc = json.loads(s3_client.get_object(Bucket=bucket, Key="old.manifest.json")["Body"].read())
    for entry in doc["Files"]:
        del entry["Mode"]
    body = json.dumps(doc, separators=(",", ":")).encode()
    s3_client.put_object(Bucket=bucket, Key="old.manifest.json", Body=body)
    checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
    spec = published.model_dump(by_alias=True)
    spec["Params"]["ChecksumSHA256"] = checksum
    out = fetch_result(PublishedResult.model_validate(spec), tmp_path / "got", s3=s3_storage)
    assert (out / "a").read_bytes() == b"a"
    assert perms(out / "a") == 0o666 & ~_umask()


def test_a_manifest_with_a_bad_mode_or_folder_is_refused(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "a").write_bytes(b"a")
    published = publish_to(
        folder, plain_spec(bucket, f"{uuid.uuid4().hex}/"), ExecutionContext.new(), s3=s3_storage
    )
    key = published.model_dump(by_alias=True)["Params"]["Key"]
    changes: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda d: d["Files"][0].update(Mode="40755"), "not a regular file's mode"),
        (lambda d: d["Files"][0].update(Mode="rwx"), "bad Mode"),
        (lambda d: d.update(Folders=["../up"]), "unsafe Path"),
    ]
    for change, problem in changes:
        doc = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read())
        change(doc)
        body = json.dumps(doc).encode()
        bad = f"{key.rstrip('/')}-bad/"
        s3_client.put_object(Bucket=bucket, Key=manifest_key(bad), Body=body)
        spec = published.model_dump(by_alias=True)
        spec["Params"].update(
            Key=bad, ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode()
        )
        with pytest.raises(Exception, match=problem):
            fetch_result(
                PublishedResult.model_validate(spec), tmp_path / f"got-{uuid.uuid4().hex}", s3=s3_storage
            )
