"""Plain S3 results: every file its own object under the result's prefix, uploaded concurrently.

Objects go up through obstore (Rust's `object_store`), for AWS and S3-compatible stores alike: each PUT
carries the file's SHA-256 as `x-amz-checksum-sha256`, which S3 checks before it stores the object, and
files from `multipart_threshold` on go up in parts with a composite checksum. Measured against the hand-made
SigV4 uploader it replaces and boto3 (bench/results/2026-12-01-s3-clients.md, 2 000 × 4 KiB on MinIO):
obstore from `max_concurrency` (8) threads 0.25 of a `put_object` loop; boto3 `put_object` from 8 threads
0.52. A key that obstore's path rules cannot carry (a control character, an empty, `.` or `..` segment) goes
through boto3 instead, so no name is lost.
Each upload also yields the file's `ManifestEntry` (its SHA-256, size, ETag and mode) for the result's manifest.

`plan_tree` decides what a result folder becomes, before anything is sent: each file's mode goes with it as
`x-amz-meta-mode` (octal `st_mode`, e.g. `100755`, as rclone writes it), an empty folder becomes a zero-byte
`name/` marker (the S3 console's and rclone's convention), and a symlink whose target stays inside the result
is uploaded as its target's bytes (as Bacalhau's publisher does); anything S3 cannot carry or that `get` would
refuse (an escaping link, a link to a folder, a FIFO, a name that is not UTF-8, a key over 1024 bytes) is
refused, naming its path inside the result.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..archive.checks import _kind, _link_problem
from ..checksums import b64
from ..errors import S3PublishError
from ..manifest import ManifestEntry
from ..progress import advance
from ..s3errors import StoreNotFound
from ..workers import for_each

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from ..s3access import S3Access

__all__ = ["PlainFile", "PlainTree", "obstore_can_carry", "plan_tree", "put_object", "upload_files"]

_CONTROL = re.compile("[\x00-\x1f\x7f]")
MAX_KEY_BYTES = 1024
"""S3's limit on a key's length in UTF-8 bytes."""


@dataclass(frozen=True)
class PlainFile:
    """One object of a plain result: the file to read (a symlink reads as its target), its key and mode."""

    path: Path
    key: str
    mode: int


@dataclass(frozen=True)
class PlainTree:
    """What a result folder becomes under a prefix: file objects and empty-folder markers (keys ending `/`)."""

    files: list[PlainFile]
    markers: list[str]


def _refuse(rel: str, why: str) -> S3PublishError:
    shown = os.fsencode(rel).decode("utf-8", "backslashreplace")
    return S3PublishError(f"publish refused: '{shown}' in the result folder {why}")


def _key(prefix: str, rel: str) -> str:
    key = prefix + rel
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise _refuse(
            rel,
            "has a name that is not valid UTF-8, which an S3 key cannot carry; rename it, or use Encoding gzip",
        ) from None
    if size > MAX_KEY_BYTES:
        raise _refuse(
            rel,
            f"would be the key {key[:40]!r}… of {size} bytes, over S3's limit of {MAX_KEY_BYTES}; shorten the "
            "path or the Key, or use Encoding gzip",
        )
    return key


def plan_tree(root: Path, prefix: str) -> PlainTree:
    """The objects a plain publish of `root` to `prefix` writes, in path order; raises `S3PublishError`
    naming the path inside `root` for anything it cannot publish faithfully."""
    files: list[tuple[str, int]] = []
    links: dict[str, str] = {}
    empty: list[str] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        where = os.path.join(root, rel_dir)
        try:
            with os.scandir(where) as it:
                items = list(it)
        except OSError as exc:
            raise S3PublishError(f"cannot read result folder {where}: {exc.strerror}") from None
        if not items and rel_dir:
            empty.append(rel_dir)
        for item in items:
            rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
            try:
                mode = item.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    links[rel] = os.readlink(item.path)
            except OSError as exc:
                raise S3PublishError(f"cannot read {rel!r} in the result folder: {exc.strerror}") from None
            if stat.S_ISDIR(mode):
                pending.append(rel)
            elif stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                files.append((rel, mode))
            else:
                raise _refuse(rel, f"is {_kind(mode)}; plain S3 results hold files and folders only")
    planned: list[PlainFile] = []
    for rel, mode in files:
        if rel in links:
            problem = _link_problem(links, rel, links[rel])
            if problem:
                raise _refuse(rel, f"is a symlink that {problem}; only links inside the result are published")
            try:
                mode = os.stat(root / rel).st_mode
            except OSError as exc:
                raise _refuse(rel, f"is a symlink whose target cannot be read ({exc.strerror})") from None
            if not stat.S_ISREG(mode):
                raise _refuse(
                    rel,
                    "is a symlink to a folder or a special file; plain S3 publishes a link as its "
                    "target file's bytes only (use Encoding gzip to keep the link)",
                )
        planned.append(PlainFile(root / rel, _key(prefix, rel), stat.S_IFREG | stat.S_IMODE(mode)))
    markers = [_key(prefix, rel + "/") for rel in empty]
    planned.sort(key=lambda f: f.key)
    return PlainTree(planned, sorted(markers))


def mode_text(mode: int) -> str:
    """`st_mode` as rclone writes it to `x-amz-meta-mode`: octal, e.g. `100755`."""
    return f"{mode:o}"


def obstore_can_carry(key: str) -> bool:
    """True when obstore stores `key` byte for byte (it refuses control characters and empty, `.` and
    `..` segments, and drops a trailing `/`)."""
    if _CONTROL.search(key):
        return False
    return all(segment not in ("", ".", "..") for segment in key.split("/"))


def upload_files(
    storage: S3Access,
    store: Any,
    client: Callable[[], S3Client],
    bucket: str,
    files: list[PlainFile],
    *,
    done: list[str],
    prefix: str = "",
) -> list[ManifestEntry]:
    """Upload each file concurrently (its mode as `x-amz-meta-mode`) and return their manifest entries (paths relative to `prefix`);
    every key that landed is appended to `done` (also when a later file fails, so the caller can remove
    them). The first failure stops the rest and is raised. `store` is the bucket's obstore store
    (`storage.get_store`); `client()` gives the boto3 client, asked for only when a key needs it."""
    lock = threading.Lock()
    entries: list[ManifestEntry] = []

    def upload(item: PlainFile) -> None:
        content_type = mimetypes.guess_type(item.path.name)[0] or "application/octet-stream"
        size = item.path.stat().st_size
        entry = _put(item.path, item.key, size, content_type, item.mode)
        with lock:
            done.append(item.key)
            entries.append(entry)
        advance(size)

    def _put(path: Path, key: str, size: int, content_type: str, mode: int) -> ManifestEntry:
        relative = key[len(prefix) :]
        if not obstore_can_carry(key):
            extra = {
                "ChecksumAlgorithm": "SHA256",
                "ContentType": content_type,
                "Metadata": {"mode": mode_text(mode)},
            }
            client().upload_file(str(path), bucket, key, ExtraArgs=extra)
            return ManifestEntry(relative, size, _file_sha256(path), mode=mode)
        body: bytes | Path = path.read_bytes() if size < storage.multipart_threshold else path
        digest = b64(hashlib.sha256(body).digest()) if isinstance(body, bytes) else _file_sha256(path)
        put = put_object(
            store,
            key,
            body,
            attributes={"Content-Type": content_type, "mode": mode_text(mode)},
            use_multipart=isinstance(body, Path),
            chunk_size=storage.multipart_chunksize,
            max_concurrency=2,
        )
        return ManifestEntry(
            relative, len(body) if isinstance(body, bytes) else size, digest, put.get("e_tag"), mode
        )

    for_each(files, upload, threads=storage.max_concurrency, name="pbp-s3-plain")
    return entries


def put_object(store: Any, key: str, body: bytes | Path, **options: Any) -> Any:
    """`obstore.put`, its 404 (NoSuchBucket, ...) raised as `StoreNotFound`: obstore raises the builtin
    FileNotFoundError, which a local file also may."""
    import obstore

    try:
        return obstore.put(store, key, body, **options)
    except FileNotFoundError as exc:
        raise StoreNotFound(str(exc)) from None


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return b64(hashlib.file_digest(f, "sha256").digest())
