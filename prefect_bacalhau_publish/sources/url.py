"""The `urlDownload` input source: an HTTP(S) download, verified, then extracted or kept as one file.

The body is checked against `Content-Length` and, when the server sends one (the local result server
does), against the SHA-256 in `Repr-Digest` (RFC 9530) or `Digest` (RFC 3230). A download that breaks
mid-way is resumed with `Range` + `If-Range` (at most `RESUMES` times) when the server accepts ranges.
Redirects are not followed and proxies from the environment are not used.

The client is urllib3 (installed with botocore): it reads 1 GiB in 1 MiB pieces with 1.0 s of CPU here,
httpx in ~4 KiB h11 events with 2.7 s (see kubo/gateway.py), which is what decided `get` of a local
result against `curl | tar xz` (W5).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from ..errors import ChecksumMismatchError, FetchError
from ..progress import advance, expect
from ..slicedwrite import write_sliced
from ..specs import SourceSpec, URLParams
from .place import beside, check_dest, place
from .tail import extract_while_downloading

if TYPE_CHECKING:
    from ..blocks import LocalResultServer

__all__ = ["RESUMES", "expected_sha256", "fetch", "file_name"]

logger = logging.getLogger("prefect_bacalhau_publish.url")

RESUMES = 3
TIMEOUT = urllib3.Timeout(connect=10.0, read=60.0)
CHUNK = 1 << 20
_BROKEN = (ProtocolError, ReadTimeoutError)


def fetch(source: SourceSpec, dest: Path, target: LocalResultServer | None) -> Path:
    """Materialise a URL input at `dest`: an extracted archive folder, or a folder holding the one file.

    Archives (`Extract: true`, or unset and the URL path ends in `.tar.gz`/`.tgz`) are extracted safely;
    `Extract: false` keeps the file as is. `target` is not needed: the URL says everything.
    """
    params = source.params
    if not isinstance(params, URLParams):
        raise FetchError(f"invalid storage source type. expected urlDownload, but received: {source.type}")
    url = params.url
    path = urlparse(url).path
    extract = params.extract if params.extract is not None else path.endswith((".tar.gz", ".tgz"))
    check_dest(dest)
    parent = dest.absolute().parent
    try:
        with beside(dest, ".url-input-") as tmp:
            size = _materialise(url, tmp, extract)
            place(tmp / "content", dest)
    except OSError as exc:
        raise FetchError(f"cannot store {url} under {parent}: {exc.strerror or exc}") from None
    logger.info("fetched %s (%d bytes) into %s", url, size, dest)
    return dest


def _materialise(url: str, tmp: Path, extract: bool) -> int:
    """Download `url` into `tmp` and leave the input at `tmp/content`; return the bytes downloaded."""
    download = tmp / "download.part"
    if extract:
        try:
            return extract_while_downloading(lambda out: _download(url, out), tmp / "content")
        except FetchError as exc:
            if url in str(exc):  # the download's own error names the URL already
                raise
            raise type(exc)(f"{url}: {exc}") from exc
    with open(download, "w+b") as out:
        size = _download(url, out)
    if not extract:
        (tmp / "content").mkdir()
        os.replace(download, tmp / "content" / file_name(url))
    return size


def file_name(url: str) -> str:
    """A safe local file name from the URL's last path segment (`download` when there is none)."""
    segment = unquote(urlparse(url).path.rstrip("/").rpartition("/")[2])
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", segment).lstrip(".")
    return cleaned[:200] or "download"


def expected_sha256(headers: urllib3.HTTPHeaderDict) -> bytes | None:
    """The SHA-256 a response declares in `Repr-Digest` (`sha-256=:b64:`) or else `Digest` (`SHA-256=b64`)."""
    for header, pattern in (
        ("repr-digest", r"sha-256\s*=\s*:([^:]*):"),
        ("digest", r"sha-256\s*=\s*([^,\s]*)"),
    ):
        for value in ",".join(headers.getlist(header)).split(","):
            match = re.fullmatch(pattern, value.strip(), flags=re.IGNORECASE)
            if match is None:
                continue
            try:
                digest = base64.b64decode(match[1], validate=True)
            except binascii.Error:
                digest = b""
            if len(digest) != 32:
                raise FetchError(f"the server sent a malformed {header} header: {value!r}")
            return digest
    return None


@dataclass
class _Progress:
    """What is known of the download so far (reset whenever the server sends the whole file again)."""

    got: int = 0
    size: int | None = None
    digest: bytes | None = None
    etag: str | None = None
    resumable: bool = False
    sha: Any = field(default_factory=hashlib.sha256)


def _download(url: str, out: BinaryIO) -> int:
    """Download `url` into `out` (resuming a broken body when possible), verify it; return its size."""
    state = _Progress()
    pool = urllib3.PoolManager(retries=False, timeout=TIMEOUT)
    try:
        with pool:
            for attempt in range(RESUMES + 1):
                try:
                    _get(pool, url, out, state)
                    broken: Exception | None = None
                except _BROKEN as exc:
                    broken = exc
                if broken is None and (state.size is None or state.got == state.size):
                    break
                reason = broken or f"the body ended after {state.got} of {state.size} bytes"
                if not state.resumable or attempt == RESUMES:
                    raise FetchError(f"download of {url} broke off after {state.got} bytes: {reason}")
                logger.warning("download of %s broke off at byte %d (%s); resuming", url, state.got, reason)
    except NewConnectionError as exc:
        raise FetchError(
            f"cannot connect to {url}: {exc}. The result server may be down or have moved to another "
            "address: start it (prefect-bacalhau serve), or rewrite the URL with "
            "`prefect-bacalhau readdress OLD NEW SPEC.json` "
            "(in Python, prefect_bacalhau_publish.readdress.readdress())"
        ) from None
    except ConnectTimeoutError as exc:
        raise FetchError(f"timed out downloading {url}: {exc!r}") from None
    except HTTPError as exc:
        raise FetchError(f"downloading {url} failed: {exc!r}") from None
    if state.digest is not None and state.sha.digest() != state.digest:
        raise ChecksumMismatchError(
            f"checksum mismatch for {url}: the downloaded bytes hash to sha-256 {state.sha.hexdigest()}, "
            f"the server declares {state.digest.hex()}; the stored result is damaged or was altered"
        )
    return state.got


def _get(pool: urllib3.PoolManager, url: str, out: BinaryIO, state: _Progress) -> None:
    """One GET: the whole file, or the rest of it from `state.got`; appends to `out` and to the hash."""
    headers = {"accept-encoding": "identity"}
    if state.got:
        headers["range"] = f"bytes={state.got}-"
        if state.etag:
            headers["if-range"] = state.etag
    response = pool.request("GET", url, headers=headers, redirect=False, preload_content=False)
    try:
        if response.status == 200:
            _restart(response, out, state)
        elif response.status == 206 and state.got:
            _check_content_range(url, response, state)
        else:
            raise FetchError(_status_problem(url, response))
        while chunk := response.read1(CHUNK):  # what has arrived: a break keeps every byte before it
            write_sliced(out, chunk)
            advance(len(chunk))
            state.sha.update(chunk)
            state.got += len(chunk)
    finally:
        response.close()


def _restart(response: urllib3.BaseHTTPResponse, out: BinaryIO, state: _Progress) -> None:
    """A 200 answer: the whole file follows, so start over with its headers."""
    out.seek(0)
    out.truncate()
    length = response.headers.get("content-length")
    identity = response.headers.get("content-encoding", "identity").lower() == "identity"
    etag = response.headers.get("etag")
    state.got = 0
    state.sha = hashlib.sha256()
    state.size = int(length) if length and length.isdigit() and identity else None
    state.digest = expected_sha256(response.headers)
    state.etag = etag if etag and not etag.startswith("W/") else None
    state.resumable = state.size is not None and response.headers.get("accept-ranges", "").lower() == "bytes"
    if state.size is not None:
        expect(state.size)


def _check_content_range(url: str, response: urllib3.BaseHTTPResponse, state: _Progress) -> None:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers.get("content-range", ""))
    if match is None or int(match[1]) != state.got or int(match[3]) != state.size:
        raise FetchError(
            f"{url} answered the resume request with Content-Range "
            f"{response.headers.get('content-range')!r}, expected bytes {state.got}-.../{state.size}"
        )


def _status_problem(url: str, response: urllib3.BaseHTTPResponse) -> str:
    code = response.status
    if 300 <= code < 400:
        where = response.headers.get("location", "(no Location)")
        return (
            f"{url} redirects (HTTP {code}) to {where}; redirects are not followed: "
            "put the final URL in the spec"
        )
    if code == 404:
        return (
            f"{url} was not found (HTTP 404): the result may have been deleted by the server's retention "
            "(max_age / max_total_bytes), or the server serves another storage folder"
        )
    return f"{url} answered HTTP {code} {response.reason or ''}".rstrip()
