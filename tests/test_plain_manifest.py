"""Plain S3 results verified as a whole (issues 24, 26): the manifest beside the prefix, on the real MinIO."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish.blocks import S3Storage
from prefect_bacalhau_publish.errors import ChecksumMismatchError, FetchError
from prefect_bacalhau_publish.manifest import FORMAT, Manifest, ManifestEntry, manifest_key
from prefect_bacalhau_publish.progress import listening
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.resolve import fetch_result
from prefect_bacalhau_publish.sources import fetch_source
from prefect_bacalhau_publish.specs import ExecutionContext, PublishedResult, PublisherSpec, SourceSpec


def sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def result_folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


FILES = {
    "stdout": b"hello\n",
    "exitCode": b"0",
    "outputs/a.txt": b"a" * 100,
    "outputs/deep/b.bin": os.urandom(5000),
    "outputs/empty": b"",
    "outputs/name with spaces?#%+.txt": b"odd",
}


def publish_plain(
    tmp_path: Path, storage: S3Storage, bucket: str, files: dict[str, bytes] = FILES
) -> PublishedResult:
    folder = result_folder(tmp_path / "result", files)
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "runs/{executionID}", "Encoding": "plain"}}
    )
    return publish_to(folder, spec, ExecutionContext.new(), s3=storage)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_publish_writes_a_manifest_beside_the_prefix_and_records_its_checksum(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    published = publish_plain(tmp_path, s3_storage, bucket)
    params = published.params
    key = params.key  # type: ignore[union-attr]
    assert key.startswith("runs/") and key.endswith("/")
    stored = s3_client.get_object(Bucket=bucket, Key=manifest_key(key), ChecksumMode="ENABLED")
    body = stored["Body"].read()
    assert params.checksum_sha256 == sha(body) == stored["ChecksumSHA256"]  # type: ignore[union-attr]
    doc = json.loads(body)
    assert doc["Format"] == FORMAT and doc["Prefix"] == key
    assert {f["Path"]: (f["Size"], f["ChecksumSHA256"]) for f in doc["Files"]} == {
        name: (len(data), sha(data)) for name, data in FILES.items()
    }
    assert [f["Path"] for f in doc["Files"]] == sorted(FILES)
    assert all(f["ETag"].startswith('"') for f in doc["Files"])
    # The manifest is outside the prefix: listing the prefix (as Bacalhau does) shows the files alone.
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])]
    assert sorted(listed) == sorted(key + name for name in FILES)
    # The spec stays one Bacalhau reads: the same fields, ChecksumSHA256 beside them.
    assert set(published.model_dump(by_alias=True, exclude_none=True)["Params"]) == {
        "Bucket", "Key", "Region", "Endpoint", "ChecksumSHA256"
    }  # fmt: skip


def test_get_result_round_trip_with_progress(tmp_path: Path, s3_storage: S3Storage, bucket: str) -> None:
    published = publish_plain(tmp_path, s3_storage, bucket)
    moved: list[int] = []
    expected: list[int] = []
    with listening(moved.append, expected=expected.append):
        fetch_result(published, tmp_path / "got", s3=s3_storage)
    assert tree(tmp_path / "got") == FILES
    assert sum(moved) == sum(map(len, FILES.values())) == expected[0]


def test_an_object_past_4_mib_is_streamed_checked_and_keeps_its_mode(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    big = os.urandom(6 * 1024 * 1024 + 7)  # read in 1 MiB chunks, not in one piece
    files = {"outputs/big.bin": big, "outputs/small.txt": b"s"}
    folder = result_folder(tmp_path / "result", files)
    (folder / "outputs/big.bin").chmod(0o750)
    spec = PublisherSpec.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "runs/{executionID}", "Encoding": "plain"}}
    )
    published = publish_to(folder, spec, ExecutionContext.new(), s3=s3_storage)
    moved: list[int] = []
    with listening(moved.append):
        fetch_result(published, tmp_path / "got", s3=s3_storage)
    assert tree(tmp_path / "got") == files
    assert (tmp_path / "got/outputs/big.bin").stat().st_mode & 0o777 == 0o750
    assert sum(moved) == len(big) + 1 and len(moved) >= 4  # the big one: chunks of 1 MiB or more
    # The same size with other bytes under the same key: the stream's hash catches it.
    key = published.params.key  # type: ignore[union-attr]
    s3_client.put_object(Bucket=bucket, Key=key + "outputs/big.bin", Body=os.urandom(len(big)))
    with pytest.raises(ChecksumMismatchError, match=r"outputs/big\.bin"):
        fetch_result(published, tmp_path / "again", s3=s3_storage)
    assert not (tmp_path / "again").exists()


def test_the_s3_input_source_fetches_through_the_manifest_with_filter(
    tmp_path: Path, s3_storage: S3Storage, bucket: str
) -> None:
    published = publish_plain(tmp_path, s3_storage, bucket)
    source = published.to_input_source("/inputs/prev").source
    fetch_source(source, tmp_path / "all", s3=s3_storage)
    assert tree(tmp_path / "all") == FILES
    filtered = SourceSpec.model_validate(
        {
            "Type": "s3",
            "Params": {**source.params.model_dump(by_alias=True, exclude_none=True), "Filter": "^outputs/"},
        }
    )
    fetch_source(filtered, tmp_path / "some", s3=s3_storage)
    assert tree(tmp_path / "some") == {k: v for k, v in FILES.items() if k.startswith("outputs/")}


def test_an_empty_result_round_trips_as_an_empty_folder(
    tmp_path: Path, s3_storage: S3Storage, bucket: str
) -> None:
    published = publish_plain(tmp_path, s3_storage, bucket, files={})
    fetch_result(published, tmp_path / "got", s3=s3_storage)
    assert (tmp_path / "got").is_dir() and list((tmp_path / "got").iterdir()) == []


def test_an_overwritten_object_fails_the_get_and_places_nothing(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    published = publish_plain(tmp_path, s3_storage, bucket)
    key = published.params.key  # type: ignore[union-attr]
    s3_client.put_object(Bucket=bucket, Key=key + "outputs/a.txt", Body=b"b" * 100)  # same size, new bytes
    dest = tmp_path / "got"
    with pytest.raises(ChecksumMismatchError, match=r"outputs/a\.txt.*(replaced|altered)"):
        fetch_result(published, dest, s3=s3_storage)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["result"]  # no staging folder left behind


def test_altered_bytes_with_the_published_etag_still_fail(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    """The ETag pin is not what catches it: the manifest's ETag is removed, the bytes are still hashed."""
    published = publish_plain(tmp_path, s3_storage, bucket)
    key = published.params.key  # type: ignore[union-attr]
    s3_client.put_object(Bucket=bucket, Key=key + "stdout", Body=b"HELLO\n")
    manifest = Manifest.from_bytes(
        s3_client.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read(), "m"
    )
    unpinned = Manifest(
        manifest.prefix, tuple(ManifestEntry(e.path, e.size, e.sha256) for e in manifest.entries)
    )
    body = unpinned.to_bytes()
    s3_client.put_object(Bucket=bucket, Key=manifest_key(key), Body=body)
    spec = PublishedResult.model_validate(
        {
            "Type": "s3",
            "Params": {
                **published.params.model_dump(by_alias=True, exclude_none=True),
                "ChecksumSHA256": sha(body),
            },
        }
    )
    with pytest.raises(ChecksumMismatchError, match=r"checksum mismatch for s3://.*stdout: got 6 bytes"):
        fetch_result(spec, tmp_path / "got", s3=s3_storage)
    assert not (tmp_path / "got").exists()


def test_a_deleted_object_fails_the_get(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    published = publish_plain(tmp_path, s3_storage, bucket)
    key = published.params.key  # type: ignore[union-attr]
    s3_client.delete_object(Bucket=bucket, Key=key + "outputs/deep/b.bin")
    with pytest.raises(
        ChecksumMismatchError, match=r"outputs/deep/b\.bin is listed in the result's manifest but missing"
    ):
        fetch_result(published, tmp_path / "got", s3=s3_storage)
    assert not (tmp_path / "got").exists()


def test_an_added_object_is_not_part_of_the_result(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    published = publish_plain(tmp_path, s3_storage, bucket)
    key = published.params.key  # type: ignore[union-attr]
    s3_client.put_object(Bucket=bucket, Key=key + "outputs/intruder.txt", Body=b"x")
    fetch_result(published, tmp_path / "got", s3=s3_storage)
    assert tree(tmp_path / "got") == FILES


def test_a_tampered_or_missing_manifest_is_refused(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    published = publish_plain(tmp_path, s3_storage, bucket)
    key = published.params.key  # type: ignore[union-attr]
    original = s3_client.get_object(Bucket=bucket, Key=manifest_key(key))["Body"].read()
    s3_client.put_object(
        Bucket=bucket, Key=manifest_key(key), Body=original.replace(b'"Size":100', b'"Size":101')
    )
    with pytest.raises(
        ChecksumMismatchError, match=r"checksum mismatch for the manifest .*altered after publishing"
    ):
        fetch_result(published, tmp_path / "got", s3=s3_storage)
    s3_client.delete_object(Bucket=bucket, Key=manifest_key(key))
    with pytest.raises(FetchError, match=r"runs/.*\.manifest\.json does not exist"):
        fetch_result(published, tmp_path / "got", s3=s3_storage)
    assert not (tmp_path / "got").exists()


@pytest.mark.parametrize(
    "doc",
    [
        b"not json",
        b'{"Format": "other", "Prefix": "p/", "Files": []}',
        json.dumps(
            {"Format": FORMAT, "Prefix": "p/", "Files": [{"Path": "../x", "Size": 1, "ChecksumSHA256": "a"}]}
        ).encode(),
        json.dumps(
            {
                "Format": FORMAT,
                "Prefix": "p/",
                "Files": [{"Path": "/etc/x", "Size": 1, "ChecksumSHA256": "a"}],
            }
        ).encode(),
        json.dumps(
            {"Format": FORMAT, "Prefix": "p/", "Files": [{"Path": "a", "Size": -1, "ChecksumSHA256": "a"}]}
        ).encode(),
        json.dumps({"Format": FORMAT, "Prefix": "p/", "Files": [{"Path": "a", "Size": 1}]}).encode(),
        json.dumps(
            {"Format": FORMAT, "Prefix": "p/", "Files": [{"Path": "a", "Size": 1, "ChecksumSHA256": "x"}] * 2}
        ).encode(),
        json.dumps(  # out of path order: to_bytes sorts, and a reader that streams relies on it
            {
                "Format": FORMAT,
                "Prefix": "p/",
                "Files": [
                    {"Path": "b", "Size": 1, "ChecksumSHA256": "x"},
                    {"Path": "a", "Size": 1, "ChecksumSHA256": "x"},
                ],
            }
        ).encode(),
        json.dumps(  # a file where a folder is listed
            {
                "Format": FORMAT,
                "Prefix": "p/",
                "Files": [{"Path": "a", "Size": 1, "ChecksumSHA256": "x"}],
                "Folders": ["a"],
            }
        ).encode(),
        json.dumps(  # a Size that is not an integer
            {"Format": FORMAT, "Prefix": "p/", "Files": [{"Path": "a", "Size": 1.5, "ChecksumSHA256": "x"}]}
        ).encode(),
        b'{"Format": "prefect-bacalhau-publish/plain-manifest/v1", "Prefix": "p/", "Files": [{"Path": "a"',
    ],
)
def test_malformed_manifests_are_refused_with_the_manifest_named(doc: bytes) -> None:
    with pytest.raises(FetchError, match=r"the manifest s3://b/p\.manifest\.json is malformed"):
        Manifest.from_bytes(doc, "s3://b/p.manifest.json")


def test_a_hostile_manifest_with_a_matching_checksum_cannot_escape(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any
) -> None:
    """Whoever can write the spec and the manifest still cannot make the get write outside its folder."""
    body = json.dumps(
        {
            "Format": FORMAT,
            "Prefix": "evil/",
            "Files": [{"Path": "../../escape", "Size": 1, "ChecksumSHA256": sha(b"x")}],
        }
    ).encode()
    s3_client.put_object(Bucket=bucket, Key="evil.manifest.json", Body=body)
    spec = PublishedResult.model_validate(
        {"Type": "s3", "Params": {"Bucket": bucket, "Key": "evil/", "ChecksumSHA256": sha(body)}}
    )
    with pytest.raises(FetchError, match="malformed"):
        fetch_result(spec, tmp_path / "got", s3=s3_storage)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "got").exists()


def test_fetch_needs_only_get_object(tmp_path: Path, s3_storage: S3Storage, bucket: str, minio: Any) -> None:
    """No listing: credentials allowed s3:GetObject alone fetch a plain result with a manifest."""
    published = publish_plain(tmp_path, s3_storage, bucket)
    reader = minio.limited_user(f"r{uuid.uuid4().hex[:10]}", ["s3:GetObject"], bucket)
    fetch_result(published, tmp_path / "got", s3=reader)
    assert tree(tmp_path / "got") == FILES


def test_a_foreign_prefix_without_manifest_keeps_bacalhau_semantics_and_warns_when_empty(
    tmp_path: Path, s3_storage: S3Storage, bucket: str, s3_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    s3_client.put_object(Bucket=bucket, Key="theirs/x.txt", Body=b"x", ChecksumAlgorithm="SHA256")
    s3_client.put_object(Bucket=bucket, Key="theirs/y.txt", Body=b"y")  # no checksum at all: still fetched
    source = SourceSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": "theirs/"}})
    fetch_source(source, tmp_path / "got", s3=s3_storage)
    assert tree(tmp_path / "got") == {"x.txt": b"x", "y.txt": b"y"}
    empty = SourceSpec.model_validate({"Type": "s3", "Params": {"Bucket": bucket, "Key": "nothing-here/"}})
    with caplog.at_level(logging.WARNING, logger="prefect_bacalhau_publish.s3"):
        fetch_source(empty, tmp_path / "none", s3=s3_storage)
    assert "holds no objects" in caplog.text and "nothing-here/" in caplog.text


def test_fetch_inside_a_running_event_loop(tmp_path: Path, s3_storage: S3Storage, bucket: str) -> None:
    """The sync API called from async code (an async flow calling it directly) still works."""
    published = publish_plain(tmp_path, s3_storage, bucket)

    async def main() -> None:
        fetch_result(published, tmp_path / "got", s3=s3_storage)

    asyncio.run(main())
    assert tree(tmp_path / "got") == FILES


_PEAK = """
import base64, hashlib, io, sys, tracemalloc
from prefect_bacalhau_publish.manifest import Manifest, ManifestEntry, ManifestReader

count = int(sys.argv[1])
entries = tuple(
    ManifestEntry(
        f"outputs/d{i // 500:03d}/f{i:06d}",
        4096,
        base64.b64encode(hashlib.sha256(str(i).encode()).digest()).decode(),
        f'"{i:032x}"',
        0o100644,
    )
    for i in range(count)
)
data = io.BytesIO(Manifest("p/", entries).to_bytes())
del entries
tracemalloc.start()
reader = ManifestReader(data, "s3://b/p.manifest.json")
total = sum(entry.size for entry in reader.entries())
seen = sum(1 for _ in reader.entries())  # a second pass reads them all again
_, high = tracemalloc.get_traced_memory()
tracemalloc.stop()
assert (total, seen) == (count * 4096, count), (total, seen)
print(high)
"""


def test_a_manifest_is_read_in_memory_flat_in_its_entries() -> None:
    """`ManifestReader` streams the entries: reading 40 000 of them needs no more memory than 4 000.
    Each count is measured in a fresh interpreter, where no other thread allocates while tracemalloc
    counts (in a test worker, Prefect's threads do)."""
    import subprocess
    import sys

    def peak(count: int) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, str(count)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout)

    small, large = peak(4_000), peak(40_000)
    assert large < small * 1.2 + 64 * 1024, (small, large)
    assert large < 4 * 1024 * 1024, large  # parsed at once, 40 000 entries took about 30 MiB
