"""The `inline` input source: data carried in the spec itself as an RFC 2397 `data:` URL, read and written as
Bacalhau's inline storage (pkg/storage/inline, with github.com/vincent-petithory/dataurl v1.0.0) does.

`application/gzip` data is a tar.gz, extracted safely (`archive.extract_archive`) into a folder at Target;
any other data becomes one file at Target. `encode_path` makes the URL as Bacalhau's `Upload` does: a file
of at most 512 bytes as plain base64 data, a bigger file or a folder as a base64 tar.gz of it under its
own name (so it lands at Target/<name>).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
import stat
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..archive import extract_archive
from ..archive.codec import _deflater
from ..archive.write import _Entry, _GzipSink, _header, _scan
from ..errors import FetchError, PublishError, SpecError
from ..progress import advance, expect
from ..specs import InlineParams, SourceSpec
from .place import beside, check_dest, place

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "GZIP",
    "LIMIT",
    "MAX_EXTRACTED",
    "MAX_FILE",
    "MAX_PLAIN",
    "decode_data_url",
    "encode_path",
    "fetch",
]

logger = logging.getLogger("prefect_bacalhau_publish.inline")

GZIP = "application/gzip"
"""The media type Bacalhau's inline storage treats as a tar.gz (compared exactly, as it does)."""
MAX_PLAIN = 512
"""Bacalhau's `maximumPlaintextSize`: a bigger file is inlined as a tar.gz."""
LIMIT = 1 << 20
"""Most characters of a data URL `encode_path` makes (1 MiB); bigger data belongs in S3, IPFS or a URL."""
MAX_FILE = 10 << 20
"""Bacalhau's `targzip.MaximumContextSize` (10 MiB): its inline storage refuses a bigger file in a tar.gz."""
MAX_EXTRACTED = 1 << 30
"""Most bytes of file data one inline tar.gz may expand to here (a 1 MiB gzip bomb stops at this)."""

_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"  # RFC 2045 token: ASCII, no controls, spaces or tspecials
_HEADER = re.compile(
    rf"data:(?:(?P<type>{_TOKEN})/(?P<subtype>{_TOKEN}))?"
    rf"(?P<params>(?:;{_TOKEN}=(?:{_TOKEN}|\"(?:[^\"\\]|\\.)*\"))*)"
    r"(?P<base64>;base64)?,"
)
_PARAM_VALUE = re.compile(rf";{_TOKEN}=({_TOKEN})")
_TYPES = ("text", "image", "audio", "video", "application", "message", "multipart")
_BASE64_DATA = re.compile(r"[A-Za-z0-9+/=\n]*")
_URL_DATA = re.compile(r"[!$%&'()*+,\-./0-9:;=?@A-Z_a-z~]*")  # dataurl's isURLCharRune
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f]")  # Go's http.DetectContentType "binary" bytes


def decode_data_url(url: str) -> tuple[str, bytes]:
    """The media type (`type/subtype`, `text/plain` when absent) and the bytes of a `data:` URL, accepted
    exactly when dataurl's `DecodeString` accepts it; ValueError saying what is wrong otherwise."""
    if not url.startswith("data:"):
        raise ValueError(f"URL is not a data URL (RFC 2397): it must start with 'data:', got {url[:40]!r}")
    if not url.isascii():
        raise ValueError("URL is not a valid data URL: it holds a non-ASCII character (escape it as %XX)")
    header = _HEADER.match(url)
    if header is None:
        raise ValueError(
            f"URL is not a valid data URL: {url[:80]!r} does not read as "
            "data:[type/subtype][;name=value]...[;base64],DATA"
        )
    kind = header["type"]
    if kind is not None and not (kind.startswith(_TYPES) or kind[:2] in ("x-", "X-")):
        raise ValueError(
            f"URL is not a valid data URL: invalid media type {kind + '/' + header['subtype']!r}"
        )
    for value in _PARAM_VALUE.findall(header["params"]):
        if _BAD_ESCAPE.search(value):
            raise ValueError(f"URL is not a valid data URL: bad %-escape in the parameter value {value!r}")
    data = url[header.end() :]
    if header["base64"]:
        if not _BASE64_DATA.fullmatch(data):
            raise ValueError(
                "URL is not a valid data URL: its base64 data holds a character outside A-Z a-z 0-9 + / ="
            )
        try:
            decoded = base64.b64decode(data.replace("\n", ""), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"URL is not a valid data URL: its base64 data is malformed ({exc})") from None
    else:
        if not _URL_DATA.fullmatch(data):
            raise ValueError(
                "URL is not a valid data URL: its data holds a character a URL may not (escape it as %XX)"
            )
        if _BAD_ESCAPE.search(data):
            raise ValueError(
                "URL is not a valid data URL: its data holds a '%' not followed by two hex digits"
            )
        decoded = bytes(
            int(part[1:3], 16) if part.startswith("%") else ord(part)
            for part in re.findall(r"%..|.", data, re.S)
        )
    return (f"{kind}/{header['subtype']}" if kind is not None else "text/plain"), decoded


def fetch(source: SourceSpec, dest: Path, target: Any) -> Path:
    """Materialise an inline input at `dest`: its tar.gz extracted into a folder, or its data as one file.
    `target` is not needed: the spec holds the data."""
    params = source.params
    if not isinstance(params, InlineParams):
        raise FetchError(f"invalid storage source type. expected inline, but received: {source.type}")
    try:
        content_type, data = decode_data_url(params.url)
    except ValueError as exc:  # not reached for a validated spec
        raise SpecError(f"invalid inline input source spec: Params.URL: {exc}") from None
    check_dest(dest)
    expect(len(data))
    with beside(dest, ".inline-input-") as tmp:
        staging = tmp / "content"
        if content_type == GZIP:
            try:
                extract_archive(io.BytesIO(data), staging, max_bytes=MAX_EXTRACTED)
            except FetchError as exc:
                raise type(exc)(f"inline input for {dest}: {exc}") from None
        else:
            try:
                staging.write_bytes(data)
            except OSError as exc:
                raise FetchError(f"cannot write the inline input {dest}: {exc.strerror or exc}") from None
        advance(len(data))
        place(staging, dest)
    logger.info("wrote inline %s data (%d bytes) into %s", content_type, len(data), dest)
    return dest


class _TooBig(Exception):
    """The tar.gz being built would not fit in the data URL limit."""


class _Capped(io.BytesIO):
    """An in-memory output that refuses to grow past `cap` bytes."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def write(self, buffer: ReadableBuffer, /) -> int:
        written = super().write(buffer)
        if self.tell() > self.cap:
            raise _TooBig
        return written


def encode_path(path: str | os.PathLike[str]) -> str:
    """The `data:` URL of a file or folder, as Bacalhau's inline storage `Upload` makes it.

    A file of at most `MAX_PLAIN` bytes: `data:<type>;base64,<data>` (`text/plain;charset=utf-8` or
    `application/octet-stream`, by Go's text-or-binary rule; the media type is informational). A bigger file
    or a folder: `data:application/gzip;base64,<tar.gz>`, its entries under the path's own name, written by
    this package's deterministic archive writer. SpecError when `path` cannot be read, holds a symlink, a
    special file or a file over `MAX_FILE` (Bacalhau's limits), or the URL would exceed `LIMIT`.
    """
    where = os.fspath(path)
    try:
        info = os.stat(where)
    except OSError as exc:
        raise SpecError(f"cannot inline {where}: {exc.strerror or exc}") from None
    if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_PLAIN:
        try:
            with open(where, "rb") as handle:
                data = handle.read(MAX_PLAIN + 1)
        except OSError as exc:
            raise SpecError(f"cannot inline {where}: {exc.strerror or exc}") from None
        media = "application/octet-stream" if _BINARY.search(data) else "text/plain;charset=utf-8"
        url = f"data:{media};base64,{base64.b64encode(data).decode()}"
    elif stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode):
        prefix = f"data:{GZIP};base64,"
        out = _Capped(3 * ((LIMIT - len(prefix)) // 4))
        try:
            _write_tar_gz(where, info, out)
        except _TooBig:
            raise SpecError(_too_big(where)) from None
        except PublishError as exc:
            raise SpecError(f"cannot inline {where}: {exc}") from None
        url = prefix + base64.b64encode(out.getvalue()).decode()
    else:
        raise SpecError(f"cannot inline {where}: it is neither a file nor a folder")
    if len(url) > LIMIT:  # not reached: the tar.gz output is capped to fit
        raise SpecError(_too_big(where))
    return url


def _too_big(where: str) -> str:
    return (
        f"cannot inline {where}: its data URL would be more than {LIMIT // (1 << 20)} MiB (the inline limit); "
        "put it in S3, IPFS or behind a URL and use that input source instead"
    )


def _write_tar_gz(where: str, info: os.stat_result, out: _Capped) -> None:
    """A tar.gz of `where` into `out`, its entries named `<name>/...` as Bacalhau's `targzip.Compress` does."""
    name = os.path.basename(os.path.abspath(where))
    is_dir = stat.S_ISDIR(info.st_mode)
    if is_dir:
        inside = _scan(where)
        links = [e.rel for e in inside if e.type == tarfile.SYMTYPE]
        if links:
            raise PublishError(
                f"it holds the symlink {links[0]!r}: Bacalhau's inline storage carries no links (its Upload "
                "fails on them, its PrepareStorage skips them); replace it with a copy of its target"
            )
        entries = [_Entry(name, tarfile.DIRTYPE, 0o755)] if name else []
        entries += [replace(e, rel=f"{name}/{e.rel}" if name else e.rel) for e in inside]
        sources = [None] * (len(entries) - len(inside)) + [os.path.join(where, e.rel) for e in inside]
    else:
        entries = [_Entry(name, tarfile.REGTYPE, 0o755 if info.st_mode & 0o111 else 0o644, info.st_size)]
        sources = [where]
    for entry in entries:
        if entry.type == tarfile.REGTYPE and entry.size > MAX_FILE:
            raise PublishError(
                f"{entry.rel!r} is {entry.size} bytes, more than the {MAX_FILE >> 20} MiB Bacalhau's inline "
                "storage takes per file"
            )
    sink = _GzipSink(out, _deflater("zlib", 9), digest=False)
    for entry, source in zip(entries, sources, strict=True):
        sink.write(_header(entry))
        if entry.type == tarfile.REGTYPE and source is not None:
            _copy(source, entry.size, sink, follow=not is_dir)
    sink.write(bytes(2 * tarfile.BLOCKSIZE))  # end-of-archive marker
    sink.write(bytes(-sink.offset % tarfile.RECORDSIZE))
    sink.finish()


def _copy(path: str, size: int, sink: _GzipSink, *, follow: bool) -> None:
    """Append `size` bytes of the file at `path` (padded to a tar block); PublishError if it changed size."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise PublishError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PublishError(f"{path} is no longer a regular file; it changed while being inlined")
        if sink.read_from(fd, size, path) != size or os.read(fd, 1):
            raise PublishError(f"{path} changed size while being inlined")
    finally:
        os.close(fd)
    sink.write(bytes(-size % tarfile.BLOCKSIZE))
