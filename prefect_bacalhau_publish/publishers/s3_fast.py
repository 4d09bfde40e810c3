"""Concurrent PUTs of small files to S3 with little client overhead (the hot path of a plain publish).

boto3 spends about 1.6 ms of CPU per `put_object` in botocore (request pipeline, event hooks, signing,
parsing). On a 2-core machine next to the server, that CPU time sets the pace. This module signs each PUT
itself with AWS Signature V4 (the payload's real SHA-256 as `x-amz-content-sha256`, and the same digest as
`x-amz-checksum-sha256`, so S3 stores the checksum). It writes the request on a kept-alive HTTP/1.1
connection per worker thread. That costs about 0.2 ms of CPU per file.

The fast path serves path-style `http://` endpoints (MinIO and other S3-compatible stores) with no proxy
in the way. For AWS itself (no endpoint), https, proxies, or files over `FAST_MAX_BYTES`, the same
workers call the boto3 client instead. Failures carry the same `explain` messages as the rest of the publisher.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import mimetypes
import os
import random
import re
import socket
import threading
import time
import weakref
import xml.etree.ElementTree as ElementTree
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.utils import get_environ_proxies

from ..blocks import S3Storage
from ..checksums import b64
from ..errors import S3PublishError
from ..progress import advance
from ..s3errors import explain, is_transient

if TYPE_CHECKING:
    from botocore.credentials import Credentials
    from mypy_boto3_s3 import S3Client

__all__ = ["FAST_MAX_BYTES", "fast_target", "put_retrying", "run_threads", "upload_small_files"]

logger = logging.getLogger("prefect_bacalhau_publish.s3")

FAST_MAX_BYTES = 1024 * 1024
"""Larger files go through boto3 (streamed); smaller ones are read whole and sent in one request."""

ATTEMPTS = 3
"""Tries per file on transient failures (5xx, throttling, dropped connections); 4xx are not retried."""

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024
_BUCKET = re.compile(r"^[A-Za-z0-9.\-_]{1,255}$")
_ALGORITHM = "AWS4-HMAC-SHA256"


def upload_small_files(
    storage: S3Storage,
    endpoint: str | None,
    region: str | None,
    bucket: str,
    items: Sequence[tuple[str | os.PathLike[str], str]],
    *,
    concurrency: int | None = None,
    done: list[str] | None = None,
    error_key: str | None = None,
) -> list[str]:
    """PUT every `(file, key)` with a SHA-256 checksum and a guessed Content-Type, `concurrency` at a time.

    `endpoint`/`region` are the spec's overrides, as for `storage.get_client`. Each key is appended to
    `done` (also returned) when its object is stored, in order of completion, so a caller can delete them
    if this raises. The first failure stops new uploads. Uploads already in flight finish, then
    `S3PublishError` is raised with `explain`'s message, naming `error_key` (default: the failing key).
    """
    done = [] if done is None else done
    if not items:
        return done
    client = storage.get_client(endpoint, region)
    where = endpoint or storage.endpoint_url
    try:
        target = fast_target(client, storage, bucket)
    except BotoCoreError as exc:
        raise S3PublishError(
            explain(exc, action="publish to", bucket=bucket, key=error_key or items[0][1], endpoint=where)
        ) from exc
    batch = _Batch(client, target, bucket, items, done)
    workers = min(concurrency or storage.max_concurrency, len(items))
    batch.run(max(1, workers))
    if batch.failure is not None:
        failed_key, error = batch.failure
        if isinstance(error, ClientError | BotoCoreError):
            message = explain(
                error, action="publish to", bucket=bucket, key=error_key or failed_key, endpoint=where
            )
            raise S3PublishError(message) from error
        raise error
    return done


@dataclass(frozen=True)
class _Target:
    """Where the fast path sends requests, and with which credentials and timeouts."""

    url: str
    host: str
    port: int
    host_header: str
    region: str
    credentials: Credentials
    connect_timeout: float
    read_timeout: float


def fast_target(client: S3Client, storage: S3Storage, bucket: str) -> _Target | None:
    """The fast path's target for this client, or None when boto3 must do the work (see module doc).

    Credentials are resolved as `S3Storage` resolves them for its clients: from the nested prefect-aws
    block's session, else boto3's default chain (public APIs only; the client's signer is private).
    """
    config: Any = client.meta.config  # botocore's Config sets its options as attributes at runtime
    url = client.meta.endpoint_url
    parts = urlsplit(url)
    s3_config: dict[str, Any] = dict(config.s3 or {})
    if (
        parts.scheme != "http"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.username is not None
        or s3_config.get("addressing_style") != "path"
        or config.signature_version not in (None, "s3v4", "v4")
        or (config.proxies or {}).get("http")
        or get_environ_proxies(url).get("http")
        or not _BUCKET.match(bucket)
    ):
        return None
    credentials = _credentials_for(client, storage)
    port = parts.port or 80
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if port != 80:
        host_header = f"{host_header}:{port}"
    return _Target(
        url=url,
        host=host,
        port=port,
        host_header=host_header,
        region=client.meta.region_name,
        credentials=credentials,
        connect_timeout=float(config.connect_timeout or 60),
        read_timeout=float(config.read_timeout or 60),
    )


_CREDENTIALS: weakref.WeakKeyDictionary[Any, Credentials] = weakref.WeakKeyDictionary()
_CREDENTIALS_LOCK = threading.Lock()


def _credentials_for(client: S3Client, storage: S3Storage) -> Credentials:
    """The credentials `storage` builds `client` with, resolved once per client (STS or SSO are not asked
    again on every publish; refreshable credentials refresh themselves). Raises NoCredentialsError."""
    with _CREDENTIALS_LOCK:
        credentials = _CREDENTIALS.get(client)
        if credentials is None:
            import boto3

            session = (
                storage.credentials.get_boto3_session()
                if storage.credentials is not None
                else boto3.Session()
            )
            credentials = session.get_credentials()
            if credentials is None:
                raise NoCredentialsError()
            _CREDENTIALS[client] = credentials
        return credentials


class _Batch:
    """The shared queue, results and first failure of one `upload_small_files` call."""

    def __init__(
        self,
        client: S3Client,
        target: _Target | None,
        bucket: str,
        items: Sequence[tuple[str | os.PathLike[str], str]],
        done: list[str],
    ) -> None:
        self.client = client
        self.target = target
        self.bucket = bucket
        self.queue = deque(items)
        self.done = done
        self.failure: tuple[str, BaseException] | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self, workers: int) -> None:
        threads = [
            threading.Thread(target=self._work, name=f"pbp-s3-put-{n}", daemon=True) for n in range(workers)
        ]
        run_threads(threads, on_interrupt=self.stop.set)  # uploads in flight finish, no new ones start

    def _work(self) -> None:
        wire = _Wire(self.target) if self.target is not None else None
        key = ""
        try:
            while not self.stop.is_set():
                try:
                    path, key = self.queue.popleft()
                except IndexError:
                    return
                size = self._upload(wire, path, key)
                with self.lock:
                    self.done.append(key)
                advance(size)
        except BaseException as exc:
            with self.lock:
                if self.failure is None:
                    self.failure = (key, exc)
            self.stop.set()
        finally:
            if wire is not None:
                wire.close()

    def _upload(self, wire: _Wire | None, path: str | os.PathLike[str], key: str) -> int:
        content_type = mimetypes.guess_type(os.path.basename(path))[0] or "application/octet-stream"
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if wire is None or size > FAST_MAX_BYTES:
                self._put_boto3(file, key, content_type)
                return size
            body = file.read()
        self._put_fast(wire, key, body, content_type)
        return len(body)

    def _put_boto3(self, file: BinaryIO, key: str, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=file, ChecksumAlgorithm="SHA256", ContentType=content_type
        )

    def _put_fast(self, wire: _Wire, key: str, body: bytes, content_type: str) -> None:
        digest = hashlib.sha256(body).digest()
        path = f"/{self.bucket}/{quote(key, safe='/~')}"
        put_retrying(wire, path, body, digest, content_type, stop=self.stop, bucket=self.bucket, key=key)


def run_threads(threads: Sequence[threading.Thread], on_interrupt: Callable[[], object]) -> None:
    """Start the threads and wait for them all; on Ctrl-C while waiting, call `on_interrupt`, wait for
    them again, and re-raise."""
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        on_interrupt()
        for thread in threads:
            thread.join()
        raise


def put_retrying(
    wire: _Wire,
    path: str,
    body: bytes | memoryview,
    digest: bytes,
    content_type: str | None,
    *,
    stop: threading.Event,
    bucket: str,
    key: str,
    query: str = "",
) -> _Response:
    """PUT `body` (SHA-256 `digest`) with up to ATTEMPTS tries on transient failures; checks the echoed
    checksum and returns the 200 response, or raises the ClientError / BotoCoreError of the last try.
    `stop` set by another worker ends the retrying early."""
    attempt = 0
    while True:
        error: BotoCoreError | ClientError
        try:
            response = wire.put(path, body, digest, content_type, query=query)
        except BotoCoreError as exc:
            error = exc
        else:
            if response.status == 200:
                _check_echo(response, digest, bucket, key)
                return response
            error = _client_error(response, "UploadPart" if query else "PutObject")
        attempt += 1
        if attempt >= ATTEMPTS or not _retryable(error):
            raise error
        delay = random.uniform(0.5, 1.0) * min(20.0, 0.25 * 2**attempt)
        logger.debug("retrying PUT s3://%s/%s in %.2fs after %s", bucket, key, delay, error)
        if stop.wait(delay):  # another upload failed: no point retrying this one
            raise error


def _check_echo(response: _Response, digest: bytes, bucket: str, key: str) -> None:
    """S3 echoes the checksum it stored; a store that ignores checksums echoes nothing."""
    stored = response.headers.get("x-amz-checksum-sha256")
    expected = b64(digest)
    if stored is not None and stored != expected:
        raise S3PublishError(
            f"publish to s3://{bucket}/{key} failed: S3 reports checksum {stored} but the file uploaded has "
            f"{expected}; publish again"
        )


def _retryable(error: BaseException) -> bool:
    if is_transient(error):
        return True
    return isinstance(error, ClientError) and error.response["ResponseMetadata"]["HTTPStatusCode"] >= 500


def _client_error(response: _Response, operation: str = "PutObject") -> ClientError:
    """The ClientError boto3 would raise for this S3 error response (Code and Message from its XML)."""
    code, message = str(response.status), ""
    if response.body:
        try:
            root = ElementTree.fromstring(response.body)
        except ElementTree.ParseError:
            root = None
        if root is not None:
            code = (root.findtext("Code") or code).strip()
            message = (root.findtext("Message") or "").strip()
    error_response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": response.status, "HTTPHeaders": response.headers},
    }
    return ClientError(error_response, operation)


class _Signer:
    """AWS Signature V4 for S3 PUTs, as botocore's `S3SigV4Auth` computes it; caches the day's signing key."""

    def __init__(self, credentials: Credentials, region: str) -> None:
        self._credentials = credentials
        self._region = region
        self._cache: tuple[str, str, bytes] = ("", "", b"")

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached_secret, cached_day, key = self._cache
        if cached_secret != secret or cached_day != day:
            key = _hmac(("AWS4" + secret).encode(), day)
            for part in (self._region, "s3", "aws4_request"):
                key = _hmac(key, part)
            self._cache = (secret, day, key)
        return key

    def headers(
        self,
        path: str,
        host: str,
        content_type: str | None,
        digest: bytes,
        amz_date: str | None = None,
        query: str = "",
    ) -> list[tuple[str, str]]:
        """The signed headers of `PUT path?query` (lower-case names, sorted), then `authorization`.

        `query` must already be canonical (names sorted, values URI-encoded); no content type, no header."""
        frozen = self._credentials.get_frozen_credentials()
        if frozen.access_key is None or frozen.secret_key is None:
            raise NoCredentialsError()
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        payload_hash = digest.hex()
        signed = [("content-type", content_type)] if content_type is not None else []
        signed += [
            ("host", host),
            ("x-amz-checksum-sha256", b64(digest)),
            ("x-amz-content-sha256", payload_hash),
            ("x-amz-date", amz_date),
        ]
        if frozen.token:
            signed.append(("x-amz-security-token", frozen.token))
        names = ";".join(name for name, _ in signed)
        canonical = "PUT\n{}\n{}\n{}\n{}\n{}".format(
            path, query, "".join(f"{name}:{value}\n" for name, value in signed), names, payload_hash
        )
        scope = f"{amz_date[:8]}/{self._region}/s3/aws4_request"
        to_sign = f"{_ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = self._signing_key(frozen.secret_key, amz_date[:8])
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        signed.append(
            (
                "authorization",
                f"{_ALGORITHM} Credential={frozen.access_key}/{scope}, SignedHeaders={names}, "
                f"Signature={signature}",
            )
        )
        return signed


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _NoResponse(Exception):
    """The connection closed before any byte of a response arrived (a stale keep-alive connection)."""


class _Wire:
    """One worker's kept-alive HTTP/1.1 connection to the target, with its own signer."""

    def __init__(self, target: _Target) -> None:
        self._target = target
        self._signer = _Signer(target.credentials, target.region)
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    def put(
        self,
        path: str,
        body: bytes | memoryview,
        digest: bytes,
        content_type: str | None,
        *,
        query: str = "",
    ) -> _Response:
        """Send one signed PUT and read its response; a stale kept-alive connection is replaced once."""
        headers = self._signer.headers(path, self._target.host_header, content_type, digest, query=query)
        lines = [
            f"PUT {path}{'?' + query if query else ''} HTTP/1.1",
            f"content-length: {len(body)}",
            "user-agent: prefect-bacalhau-publish",
        ]
        lines += [f"{name}: {value}" for name, value in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reused = self._sock is not None
        try:
            return self._exchange(head, body)
        except _NoResponse as exc:
            self.close()
            if not reused:
                raise ConnectionClosedError(endpoint_url=self._target.url) from exc
        try:
            return self._exchange(head, body)
        except _NoResponse as exc:
            self.close()
            raise ConnectionClosedError(endpoint_url=self._target.url) from exc

    def _connect(self) -> socket.socket:
        target = self._target
        try:
            sock = socket.create_connection((target.host, target.port), timeout=target.connect_timeout)
        except TimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=target.url, error=exc) from exc
        except OSError as exc:
            raise EndpointConnectionError(endpoint_url=target.url, error=exc) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(target.read_timeout)
        return sock

    def _exchange(self, head: bytes, body: bytes | memoryview) -> _Response:
        if self._sock is None:
            self._sock = self._connect()
        sock = self._sock
        try:
            try:
                if len(body) <= 65536:
                    sock.sendall(head + bytes(body))
                else:
                    sock.sendall(head)
                    sock.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may have answered early (an error) and closed: read what it said
            response, keep = self._read_response(sock)
        except TimeoutError as exc:
            self.close()
            raise ReadTimeoutError(endpoint_url=self._target.url, error=exc) from exc
        except (_NoResponse, BotoCoreError):
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise ConnectionClosedError(endpoint_url=self._target.url) from exc
        except ValueError as exc:
            self.close()
            raise HTTPClientError(error=exc) from exc
        if not keep:
            self.close()
        return response

    def _fill(self, sock: socket.socket) -> bool:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self._buf += chunk
        return bool(chunk)

    def _read_response(self, sock: socket.socket) -> tuple[_Response, bool]:
        """Parse one HTTP/1.x response (skipping 1xx); also say whether the connection stays usable."""
        first = True
        while True:
            while (end := self._buf.find(b"\r\n\r\n")) < 0:
                if len(self._buf) > _MAX_HEAD:
                    raise ValueError("response head too large")
                if not self._fill(sock):
                    if first and not self._buf:
                        raise _NoResponse()
                    raise ConnectionClosedError(endpoint_url=self._target.url)
            first = False
            lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
            del self._buf[: end + 4]
            version, _, rest = lines[0].partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/1.") or not code.isdigit():
                raise ValueError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
            status = int(code)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"malformed response header: {line[:80]!r}")
                name, value = name.strip().lower(), value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if 100 <= status < 200 and status != 101:
                continue
            break
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = "close" not in tokens and (version == "HTTP/1.1" or "keep-alive" in tokens)
        coding = headers.get("transfer-encoding", "").rsplit(",", 1)[-1].strip().lower()
        if coding == "chunked":
            body = self._read_chunked(sock)
        elif "transfer-encoding" not in headers and "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0 or length > _MAX_BODY:
                raise ValueError(f"unexpected response length {length}")
            body = self._read_exact(sock, length)
        elif status in (204, 304):
            body = b""
        else:  # the body runs to the end of the connection
            while self._fill(sock):
                if len(self._buf) > _MAX_BODY:
                    raise ValueError("response body too large")
            body, keep = bytes(self._buf), False
            self._buf.clear()
        return _Response(status, headers, body), keep

    def _read_exact(self, sock: socket.socket, count: int) -> bytes:
        while len(self._buf) < count:
            if not self._fill(sock):
                raise ConnectionClosedError(endpoint_url=self._target.url)
        data = bytes(self._buf[:count])
        del self._buf[:count]
        return data

    def _read_line(self, sock: socket.socket) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > _MAX_HEAD:
                raise ValueError("chunk line too long")
            if not self._fill(sock):
                raise ConnectionClosedError(endpoint_url=self._target.url)
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _read_chunked(self, sock: socket.socket) -> bytes:
        body = bytearray()
        while True:
            size = int(self._read_line(sock).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._read_line(sock):  # trailers, up to the empty line
                    pass
                return bytes(body)
            if len(body) + size > _MAX_BODY:
                raise ValueError("response body too large")
            body += self._read_exact(sock, size)
            if self._read_exact(sock, 2) != b"\r\n":
                raise ValueError("malformed chunk")
