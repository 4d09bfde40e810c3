"""The S3 input source, with Bacalhau's semantics (object vs prefix, Filter, VersionID, checksum) and Extract.

A prefix whose spec records a `ChecksumSHA256` is one of our plain results: its manifest (`manifest`) is
fetched and checked against that checksum, and exactly the files it lists are fetched and checked
(`s3_many`), with no listing. Any other prefix is listed as Bacalhau lists it, and each object is checked
against the SHA-256 S3 reports for it, when S3 has one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

from ..checksums import ChecksumVerifier, PartHasher, b64, is_composite
from ..errors import ChecksumMismatchError, FetchError, SpecError, UnsafeArchiveError
from ..manifest import ManifestEntry, ManifestReader, manifest_key
from ..progress import advance, expect
from ..publishers.s3_plain import obstore_can_carry
from ..s3access import S3Access, check_bucket, s3_access
from ..s3errors import error_code, is_denied, is_obstore, wrapped
from ..slicedwrite import write_sliced
from ..specs import S3Params, S3PreSignedParams, SourceSpec
from ..workers import for_each
from .place import beside, place
from .s3_many import Wanted, download_many, restore_mode
from .tail import extract_while_downloading

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from ..blocks import S3Target

logger = logging.getLogger("prefect_bacalhau_publish.s3")

__all__ = [
    "ListedObject",
    "download_verified",
    "explode_key",
    "fetch",
    "has_manifest",
    "objects_from_manifest",
    "relative_key",
]

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ListedObject:
    key: str
    etag: str | None = None
    version_id: str | None = None
    is_dir: bool = False
    size: int = 0
    sha256: str | None = None  # from the result's manifest
    mode: int | None = None  # from the result's manifest


def fetch(
    source: SourceSpec, dest: Path, target: S3Target | None, *, partition: tuple[int, int] = (0, 1)
) -> Path:
    """Materialise an S3 input at `dest`: one object as a file inside it, a prefix as a tree, or extracted.
    `partition` `(index, count)` keeps the execution's share of the objects, as Bacalhau assigns them."""
    params = source.params
    if not isinstance(params, S3Params):
        raise FetchError(f"invalid storage source type. expected s3, but received: {source.type}")
    if isinstance(params, S3PreSignedParams):
        return _fetch_presigned(params, dest, s3_access(target).tls_verify())
    check_bucket(params.bucket)
    storage = s3_access(target)
    endpoint = params.endpoint or storage.endpoint_url

    def client() -> S3Client:  # built when needed: a plain result with a manifest may never need it
        return storage.get_client(params.endpoint, params.region)

    try:
        with beside(dest, ".s3-input-") as tmp:
            staging = tmp / "content"
            staging.mkdir()
            if has_manifest(params):
                _fetch_with_manifest(
                    client, storage, params, staging, tmp / "manifest.json", partition, endpoint
                )
            else:
                _fetch_listed(client(), storage, params, staging, partition)
            place(staging, dest)
    except (ClientError, BotoCoreError) as exc:
        if error_code(exc) in ("404", "NotFound") and _bucket_missing(client(), params.bucket):
            raise _no_bucket(params, endpoint) from None
        raise wrapped(
            FetchError, exc, action="fetch", bucket=params.bucket, key=params.key, endpoint=endpoint
        ) from None
    logger.info("fetched s3://%s/%s into %s", params.bucket, params.key, dest)
    return dest


def _fetch_listed(
    client: S3Client, storage: S3Access, params: S3Params, staging: Path, partition: tuple[int, int]
) -> None:
    """Fetch one object, or the objects a prefix holds as Bacalhau lists them, into `staging` (or extract
    the one archive object there)."""
    listed = explode_key(client, params)
    objects = _share(listed, params, partition)
    expect(sum(obj.size for obj in objects))
    if params.extract and not params.is_prefix:
        if len(objects) != 1 or objects[0].is_dir:
            raise FetchError(
                f"Extract needs one archive object, s3://{params.bucket}/{params.key} is a folder"
            )
        extract_while_downloading(
            lambda out: download_verified(client, params.bucket, objects[0], out, params.checksum_sha256),
            staging,
        )
        return
    if params.is_prefix and not listed:
        logger.warning(
            "s3://%s/%s holds no objects: the input is an empty folder (check Bucket and Key)",
            params.bucket,
            params.key,
        )
    _download_all(client, params, objects, staging, storage.max_concurrency)


def _share(objects: list[ListedObject], params: S3Params, partition: tuple[int, int]) -> list[ListedObject]:
    """The objects execution `index` of `count` fetches (`partition.partition_objects`); with one execution
    all of them, folder markers included (they become empty folders)."""
    index, count = partition
    if count == 1 and index == 0:
        return objects
    from ..partition import partition_objects

    try:
        keep = set(partition_objects([o.key for o in objects], params, count, index))
    except ValueError as exc:
        raise SpecError(f"s3://{params.bucket}/{params.key}: {exc}") from None
    return [o for o in objects if o.key in keep]


def _no_bucket(params: S3Params, endpoint: str | None) -> FetchError:
    return FetchError(
        f"fetch s3://{params.bucket}/{params.key} failed: bucket {params.bucket!r} does not exist"
        f"{f' at {endpoint}' if endpoint else ''}: fix Bucket (or create it)"
    )


def _bucket_missing(client: S3Client, bucket: str) -> bool:
    """After a bare 404 (a HEAD has no error body): is it the bucket that is missing? Only on this failure
    path, so a fetch that succeeds never needs the `s3:ListBucket` that HeadBucket takes; False when the
    answer is not known."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return error_code(exc) in ("404", "NoSuchBucket", "NotFound")
    except BotoCoreError:
        return False
    return False


def _fetch_presigned(params: S3PreSignedParams, dest: Path, verify: bool | str) -> Path:
    """Download through the presigned URL (no credentials needed), verify ChecksumSHA256, place or extract."""
    name = PurePosixPath(params.key).name or "object"
    with beside(dest, ".s3-input-") as tmp:
        staging = tmp / "content"
        download = tmp / "download"
        if params.extract:
            extract_while_downloading(lambda out: _download_presigned(params, out, verify), staging)
        else:
            staging.mkdir()
            with open(download, "wb") as out:
                _download_presigned(params, out, verify)
            download.rename(staging / name)
        place(staging, dest)
    return dest


def _download_presigned(params: S3PreSignedParams, out: BinaryIO, verify: bool | str) -> None:
    """GET the presigned URL into `out`, checking its length and ChecksumSHA256 as the bytes pass (urllib3:
    1.0 s of CPU per GiB against httpx's 2.7 s, see sources/url.py)."""
    import urllib3  # only presigned sources need it (0.1 s of a CLI's start-up)

    where = f"s3://{params.bucket}/{params.key}"
    got = 0
    tls: dict[str, Any] = {"ca_certs": verify} if isinstance(verify, str) else {}
    if verify is False:
        tls = {"cert_reqs": "CERT_NONE"}
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=10.0, read=60.0), **tls)
    try:
        response = pool.request("GET", params.pre_signed_url, redirect=False, preload_content=False)
        try:
            if response.status != 200:
                raise FetchError(
                    f"fetch {where} through its presigned URL failed: "
                    + _refusal(response.status, response.read(65536), where)
                )
            length = response.headers.get("content-length", "")
            expected = int(length) if length.isdigit() else -1
            if expected >= 0:
                expect(expected)
            verifier = None
            if params.checksum_sha256:
                if expected < 0 and is_composite(params.checksum_sha256):
                    raise FetchError(
                        f"fetch {where} cannot be verified: the store sent no Content-Length, which a "
                        "multipart checksum needs"
                    )
                verifier = ChecksumVerifier(params.checksum_sha256, expected if expected >= 0 else None)
            while chunk := response.read1(_CHUNK):
                write_sliced(out, chunk)
                got += len(chunk)
                if verifier is not None:
                    verifier.update(chunk)
                advance(len(chunk))
        finally:
            response.close()
    except urllib3.exceptions.HTTPError as exc:
        raise FetchError(
            f"fetch {where} through its presigned URL failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        pool.clear()
    if expected >= 0 and got != expected:
        raise FetchError(f"fetch {where} was cut short: {got} of {expected} bytes")
    if verifier is not None and not verifier.matches():
        raise ChecksumMismatchError(
            f"checksum mismatch for {where}: the downloaded bytes do not hash to {params.checksum_sha256}"
        )


_XML_FIELD = re.compile(rb"<(Code|Message)>([^<]{0,300})</(?:Code|Message)>")


def _refusal(status: int, body: bytes, where: str) -> str:
    """Why the store refused a presigned GET, from its status and S3 error document, and what to do."""
    fields = {name.decode(): value.decode(errors="replace") for name, value in _XML_FIELD.findall(body)}
    code, message = fields.get("Code", ""), fields.get("Message", "")
    said = f"HTTP {status}" + (f" {code}" if code else "") + (f" ({message.rstrip('.')})" if message else "")
    if status == 403 and "expired" in message.lower():
        return f"{said}: the URL has expired; ask for a new one (get again, or presign with a longer expiry)"
    if status == 403:
        return (
            f"{said}: the credentials that signed the URL may not read {where} (they need s3:GetObject on "
            "it) or were revoked, or the URL was altered; check the signer's policy and ask for a new URL"
        )
    if status == 404:
        return f"{said}: {where} does not exist (deleted after the URL was made, or a wrong Bucket or Key)"
    return said


def explode_key(client: S3Client, params: S3Params) -> list[ListedObject]:
    """The objects an S3 source names, exactly as Bacalhau's `explodeKey` decides."""
    if not params.is_prefix:
        request: dict[str, Any] = {"Bucket": params.bucket, "Key": params.key}
        if params.version_id:
            request["VersionId"] = params.version_id
        if params.checksum_sha256:
            request["ChecksumMode"] = "ENABLED"
        head = client.head_object(**request)
        got = head.get("ChecksumSHA256", "")
        if params.checksum_sha256 and params.checksum_sha256 != got:
            why = got or (
                "none (the object carries no SHA-256 checksum: it was replaced after publishing by an "
                "upload that sent none)"
            )
            raise ChecksumMismatchError(
                f"checksum mismatch for s3://{params.bucket}/{params.key}, "
                f"expected {params.checksum_sha256}, got {why}"
            )
        if not str(head.get("ContentType", "")).startswith("application/x-directory"):
            return [
                ListedObject(
                    params.key, head.get("ETag"), params.version_id, size=head.get("ContentLength", 0)
                )
            ]
    prefix = params.key.rstrip("*")
    pattern = _filter(params)
    found: list[ListedObject] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=params.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if pattern is not None and not pattern.search(key[len(prefix) :]):
                    continue
                found.append(
                    ListedObject(key, item.get("ETag"), None, key.endswith("/"), item.get("Size", 0))
                )
    except ClientError as exc:
        if not is_denied(exc):
            raise
        raise FetchError(
            f"fetch s3://{params.bucket}/{params.key} failed: listing a prefix needs s3:ListBucket on bucket "
            f"{params.bucket!r} (arn:aws:s3:::{params.bucket}), which these credentials lack ({error_code(exc)}); "
            "grant it, or publish with Encoding gzip, whose one object needs only s3:GetObject"
        ) from None
    return found


def _filter(params: S3Params) -> Any:
    """The source's `Filter`, compiled as Bacalhau compiles it (a Go regexp, `goregexp`); None without one.
    A pattern Go refuses is a `SpecError` with Go's text, before anything is fetched."""
    if not params.filter:
        return None
    from ..goregexp import GoRegexpError, compile_go_regexp

    try:
        return compile_go_regexp(params.filter)
    except GoRegexpError as exc:
        raise SpecError(
            f"s3://{params.bucket}/{params.key}: invalid Filter {params.filter!r}: {exc}"
        ) from None


def has_manifest(params: S3Params) -> bool:
    """A prefix (`.../`) with a ChecksumSHA256: one of our plain results, verified through its manifest."""
    return bool(params.checksum_sha256) and params.key.endswith("/") and not params.extract


def objects_from_manifest(client: S3Client, params: S3Params) -> list[ListedObject]:
    """The objects the plain result's manifest lists (Filter applied), after checking the manifest against
    the spec's ChecksumSHA256. Needs only s3:GetObject: nothing is listed."""
    manifest = _read_manifest(params, io.BytesIO(), _manifest_chunks(client, params))
    files = [
        ListedObject(key, e.etag, None, size=e.size, sha256=e.sha256, mode=e.mode)
        for key, e in _manifest_files(manifest, params)
    ]
    return files + [ListedObject(key, is_dir=True) for key in _manifest_folders(manifest, params)]


def _manifest_files(manifest: ManifestReader, params: S3Params) -> Iterator[tuple[str, ManifestEntry]]:
    """Each file the manifest lists that the source's Filter keeps, with its key (read anew on each call)."""
    pattern = _filter(params)
    for entry in manifest.entries():
        if pattern is None or pattern.search(entry.path):
            yield params.key + entry.path, entry


def _manifest_folders(manifest: ManifestReader, params: S3Params) -> list[str]:
    """The keys (ending in `/`) of the empty folders the manifest lists that the source's Filter keeps."""
    pattern = _filter(params)
    return [params.key + f + "/" for f in manifest.folders if pattern is None or pattern.search(f + "/")]


def _read_manifest(params: S3Params, out: BinaryIO, chunks: Iterator[bytes]) -> ManifestReader:
    """Spool the plain result's manifest (`chunks`, from `_manifest_chunks` or `_manifest_stream`) into
    `out` (seekable), check it against the spec's ChecksumSHA256, and read its header."""
    where = f"s3://{params.bucket}/{manifest_key(params.key)}"
    hasher = hashlib.sha256()
    for chunk in chunks:
        out.write(chunk)
        hasher.update(chunk)
    got = b64(hasher.digest())
    if got != params.checksum_sha256:
        raise ChecksumMismatchError(
            f"checksum mismatch for the manifest {where}: it hashes to {got}, the spec records "
            f"{params.checksum_sha256}; the result was altered after publishing"
        )
    return ManifestReader(out, where)


def _manifest_missing(params: S3Params) -> FetchError:
    return FetchError(
        f"fetch s3://{params.bucket}/{params.key} failed: its spec records ChecksumSHA256, so it is a plain "
        f"result with a manifest, but s3://{params.bucket}/{manifest_key(params.key)} does not exist (deleted, "
        "or the result was never completed); publish it again, or drop ChecksumSHA256 to fetch the prefix "
        "unverified"
    )


def _manifest_chunks(client: S3Client, params: S3Params) -> Iterator[bytes]:
    """The manifest's bytes through boto3."""
    try:
        body = client.get_object(Bucket=params.bucket, Key=manifest_key(params.key))["Body"]
        while chunk := body.read(_CHUNK):
            yield chunk
    except ClientError as exc:
        if error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
            raise
        raise _manifest_missing(params) from None


def _manifest_stream(
    store: Any, client: Callable[[], S3Client], params: S3Params, endpoint: str | None
) -> Iterator[bytes]:
    """The manifest's bytes through obstore, as the files come: a `get` then needs no boto3 client (0.2 s
    of start-up), unless the manifest is missing and the bucket must be checked."""
    import obstore
    from obstore.exceptions import NotFoundError

    key = manifest_key(params.key)
    try:
        yield from obstore.get(store, key).stream(min_chunk_size=_CHUNK)
    except (NotFoundError, FileNotFoundError):
        if _bucket_missing(client(), params.bucket):
            raise _no_bucket(params, endpoint) from None
        raise _manifest_missing(params) from None
    except Exception as exc:
        if not is_obstore(exc):
            raise
        raise wrapped(
            FetchError, exc, action="fetch", bucket=params.bucket, key=key, endpoint=endpoint
        ) from None


def _fetch_with_manifest(
    client: Callable[[], S3Client],
    storage: S3Access,
    params: S3Params,
    staging: Path,
    spool: Path,
    partition: tuple[int, int],
    endpoint: str | None,
) -> None:
    """Fetch exactly the files a plain result's manifest lists (Filter and partition applied) into
    `staging`, each checked by `download_many`. The manifest is spooled to `spool` and read one entry at a
    time, and the files are planned as they are fetched, so memory stays flat in their number."""
    store = storage.get_store(params.bucket, params.endpoint, params.region)
    with open(spool, "w+b") as file:
        manifest = _read_manifest(params, file, _manifest_stream(store, client, params, endpoint))
        folders = _manifest_folders(manifest, params)
        shared: set[str] | None = None
        if partition != (0, 1):
            # a share needs every key: Bacalhau's "object" type hashes past their common prefix
            listed = [ListedObject(key) for key, _ in _manifest_files(manifest, params)]
            shared = {o.key for o in _share(listed, params, partition)}
            folders = []  # a share drops folder markers

        def files() -> Iterator[tuple[str, ManifestEntry]]:
            return ((k, e) for k, e in _manifest_files(manifest, params) if shared is None or k in shared)

        expect(sum(entry.size for _, entry in files()))  # also checks every entry before anything is fetched
        for folder in folders:
            staging.joinpath(*relative_key(folder, params.key).parts).mkdir(parents=True, exist_ok=True)
        leftovers: list[tuple[ListedObject, Path]] = []

        def wanted() -> Iterator[Wanted]:
            # Under a prefix key, `relative_key` of a listed key is the entry's path itself, which the reader
            # checked safe (no "", "." or ".." part): joined as strings, 17-28 µs per file less than through
            # `relative_key` and `Path` (10 000 files: 0.25 s of the GIL).
            base = os.fspath(staging)
            made: set[str] = set()
            for key, e in files():
                path = os.path.join(base, e.path)
                parent = os.path.dirname(path)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                if obstore_can_carry(key):
                    yield Wanted(key, path, e.size, e.sha256, e.etag, e.mode)
                else:  # a control character: boto3 carries it, checked alike
                    leftovers.append(
                        (ListedObject(key, e.etag, size=e.size, sha256=e.sha256, mode=e.mode), Path(path))
                    )

        concurrency = max(16, 2 * storage.max_concurrency)
        download_many(store, params.bucket, wanted(), concurrency=concurrency, endpoint=endpoint)
        for obj, path in leftovers:
            with open(path, "wb") as out:
                download_verified(client(), params.bucket, obj, out, obj.sha256)
            restore_mode(path, obj.mode)


def relative_key(key: str, source_key: str) -> PurePosixPath:
    """Key relative to the source key's folder (Bacalhau trims the prefix up to its last `/`); refuses escapes."""
    prefix_tokens = source_key.rstrip("*").split("/")
    tokens = key.split("/")
    start = 0
    for index in range(min(len(prefix_tokens) - 1, len(tokens))):
        if prefix_tokens[index] != tokens[index]:
            break
        start += 1
    parts = [t for t in tokens[start:] if t not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeArchiveError(
            f"refusing object key {key!r}: it does not map to a path inside the input folder"
        )
    return PurePosixPath(*parts)


def _plan(params: S3Params, objects: list[ListedObject], staging: Path) -> list[tuple[ListedObject, Path]]:
    """Each file object with its path under `staging` (folders made, folder markers created as folders)."""
    plan: list[tuple[ListedObject, Path]] = []
    for obj in objects:
        plan.append((obj, staging.joinpath(*relative_key(obj.key, params.key).parts)))
    files = [(obj, path) for obj, path in plan if not obj.is_dir]
    for obj, path in plan:
        if obj.is_dir:
            path.mkdir(parents=True, exist_ok=True)
    paths = [path for _, path in files]
    if len(set(paths)) != len(paths):
        raise FetchError(f"s3://{params.bucket}/{params.key} holds keys that map to the same path")
    for parent in {path.parent for _, path in files}:
        parent.mkdir(parents=True, exist_ok=True)
    return files


def _download_all(
    client: S3Client, params: S3Params, objects: list[ListedObject], staging: Path, workers: int
) -> None:
    files = _plan(params, objects, staging)
    checksum = params.checksum_sha256 if not params.is_prefix else None

    def download(item: tuple[ListedObject, Path]) -> None:
        obj, path = item
        with open(path, "wb") as out:
            mode = download_verified(client, params.bucket, obj, out, checksum, as_stored=checksum is None)
        restore_mode(path, mode)

    for_each(files, download, threads=workers, name="pbp-s3-listed")


def download_verified(
    client: S3Client,
    bucket: str,
    obj: ListedObject,
    out: BinaryIO,
    checksum: str | None,
    *,
    as_stored: bool = False,
) -> int | None:
    """Download one object pinned to its version and ETag; verify the bytes against `checksum` when given,
    else (`as_stored`) against the SHA-256 S3 reports for the object, when it has one. Returns the file
    mode the object carries in `x-amz-meta-mode` (as rclone and plain publishing write it), if any."""
    request: dict[str, Any] = {"Bucket": bucket, "Key": obj.key}
    if obj.version_id:
        request["VersionId"] = obj.version_id
    if obj.etag:
        request["IfMatch"] = obj.etag
    part_size = 0
    if checksum and is_composite(checksum):
        part_size = int(client.head_object(**request, PartNumber=1)["ContentLength"])
    if not checksum and as_stored:
        request["ChecksumMode"] = "ENABLED"
    hasher = PartHasher(part_size or _CHUNK)
    response = client.get_object(**request)
    reported = response.get("ChecksumSHA256") if not checksum and as_stored else None
    verifier = ChecksumVerifier(reported, response.get("ContentLength", 0)) if reported else None
    body = response["Body"]
    try:
        while chunk := body.read(_CHUNK):
            write_sliced(out, chunk)
            advance(len(chunk))
            if checksum:
                hasher.update(chunk)
            if verifier is not None:
                verifier.update(chunk)
    except FlexibleChecksumError:  # botocore checks a full-object checksum itself, as the last bytes arrive
        mismatch = True
    else:
        mismatch = verifier is not None and not verifier.matches()
    if mismatch:
        raise ChecksumMismatchError(
            f"checksum mismatch for s3://{bucket}/{obj.key}: the downloaded bytes do not hash to the SHA-256 "
            f"the store reports for the object ({reported}); fetch again, and check the store if it persists"
        )
    if checksum and hasher.checksum(bool(part_size)) != checksum:
        raise ChecksumMismatchError(
            f"checksum mismatch for s3://{bucket}/{obj.key}: downloaded bytes hash to "
            f"{hasher.checksum(bool(part_size))}, the spec records {checksum}; the object was altered after publishing"
        )
    return stored_mode(response.get("Metadata", {}).get("mode"))


def stored_mode(text: str | None) -> int | None:
    """`x-amz-meta-mode` (`100755`) → its mode, or None when absent, malformed or not a regular file's."""
    if not text or not text.isdigit() or "8" in text or "9" in text:
        return None
    mode = int(text, 8)
    return mode if stat.S_ISREG(mode) else None
