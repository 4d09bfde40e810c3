"""The local result server: a small Starlette app that serves the storage folder's archives, and nothing else.

GET and HEAD of `/<executionID>.tar.gz` only (top-level regular files matching `ARCHIVE_NAME`, opened with
`O_NOFOLLOW` so a planted symlink is never followed), with single `Range` requests, `ETag` /
`If-None-Match` / `If-Range`, and `Repr-Digest` (RFC 9530) plus `Digest` (RFC 3230) carrying the file's
SHA-256 (from its sidecar, or hashed once when there is none). No directory listing; every other path is 404 (or 400 when it smells of traversal).
One JSON access-log line per request goes to the `prefect_bacalhau_publish.server.access` logger.

Re-addressing: the server answers for any `Host` header, so when a node's address or port changes the
files stay reachable at the new address and only the URLs in published specs need rewriting: `readdress()`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .blocks import LocalResultServer
from .retention import SIDECAR_SUFFIX, is_archive_name, prune
from .specs import PublishedResult

__all__ = [
    "DownloadRegistry",
    "create_app",
    "parse_range",
    "read_chunk",
    "readdress",
    "running_server",
    "serve",
]

logger = logging.getLogger("prefect_bacalhau_publish.server")
access_logger = logging.getLogger("prefect_bacalhau_publish.server.access")

CHUNK = 256 * 1024
_SUSPICIOUS = re.compile(r"%|\\|\.\.|[\x00-\x1f\x7f]|^/[/.]|://")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class RangeNotSatisfiable(Exception):
    """The Range header names no byte of the file (HTTP 416)."""


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte range (first, last) a `Range` header asks of a `size`-byte file.

    None when the header is to be ignored (not `bytes`, malformed, or several ranges: the whole file is
    sent); raises RangeNotSatisfiable when the one range holds no byte of the file.
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", spec)
    if match is None or not (match[1] or match[2]):
        return None
    try:
        first = int(match[1]) if match[1] else None
        last = int(match[2]) if match[2] else None
    except ValueError:  # more digits than int() accepts
        return None
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - last), size - 1
    if last is not None and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return first, size - 1 if last is None else min(last, size - 1)


class DownloadRegistry:
    """Names of the archives with a response in progress; retention skips them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[None]:
        """Mark `name` as being served for the duration of the block."""
        with self._lock:
            self._open[name] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[name] -= 1
                if not self._open[name]:
                    del self._open[name]

    def snapshot(self) -> frozenset[str]:
        """The names being served right now."""
        with self._lock:
            return frozenset(self._open)


class _Digests:
    """SHA-256 per file version (device, inode, size, mtime): from the sidecar, else hashed once."""

    def __init__(self, capacity: int = 4096) -> None:
        self._cache: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()
        self._capacity = capacity

    async def get(self, dir_fd: int, name: str, fd: int, info: os.stat_result) -> str:
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        digest = _read_sidecar(dir_fd, name)
        if digest is None:
            digest = await anyio.to_thread.run_sync(_hash_fd, fd, info.st_size)
        self._cache[key] = digest
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return digest


def _read_sidecar(dir_fd: int, name: str) -> str | None:
    try:
        fd = os.open(name + SIDECAR_SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, 512).decode("ascii", "replace").split()
    finally:
        os.close(fd)
    return text[0] if text and _HEX64.fullmatch(text[0]) else None


def _hash_fd(fd: int, size: int) -> str:
    sha = hashlib.sha256()
    offset = 0
    while offset < size and (data := os.pread(fd, 1 << 20, offset)):
        sha.update(data)
        offset += len(data)
    return sha.hexdigest()


async def read_chunk(fd: int, size: int, offset: int, scratch: bytearray | None = None) -> bytes:
    """Up to `size` bytes at `offset`: read inline when they are in the page cache (`RWF_NOWAIT`), else
    in a worker thread, so a slow disk never stalls the event loop. `scratch` is a reusable buffer."""
    view = memoryview(scratch if scratch is not None and len(scratch) >= size else bytearray(size))[:size]
    try:
        got = os.preadv(fd, [view], offset, os.RWF_NOWAIT)
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: the filesystem cannot say
        got = 0
    if got:
        return bytes(view[:got])
    return await anyio.to_thread.run_sync(os.pread, fd, size, offset)


def _open_archive(storage: Path, name: str) -> tuple[int, int, os.stat_result] | None:
    """(dir fd, file fd, stat) of a top-level regular archive in `storage`, never through a symlink."""
    try:
        dir_fd = os.open(storage, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        os.close(dir_fd)
        return None
    try:
        info = os.fstat(fd)
        real = os.path.realpath(storage / name)
        same = os.stat(real, follow_symlinks=False)
        inside = os.path.dirname(real) == os.path.realpath(storage)
        if (
            inside
            and stat.S_ISREG(info.st_mode)
            and info.st_nlink == 1  # a hard link could alias a file outside the folder
            and (same.st_dev, same.st_ino) == (info.st_dev, info.st_ino)
        ):
            return dir_fd, fd, info
    except OSError:
        pass
    os.close(fd)
    os.close(dir_fd)
    return None


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match: `*` or any listed tag equal to `etag` under weak comparison."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


class _FileBody(Response):
    """Streams bytes [first, last] of an open file (which it closes), stopping if the client goes away."""

    def __init__(
        self,
        fd: int,
        span: tuple[int, int],
        status: int,
        headers: Mapping[str, str],
        downloads: tuple[DownloadRegistry, str] | None,
    ) -> None:
        super().__init__(status_code=status, headers=headers)
        self.fd, self.span, self.downloads = fd, span, downloads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            if self.downloads is None:  # HEAD
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            registry, name = self.downloads
            with registry.open(name):
                async with anyio.create_task_group() as group:
                    group.start_soon(self._watch, receive, group.cancel_scope)
                    await self._stream(send)
                    group.cancel_scope.cancel()
        finally:
            os.close(self.fd)

    async def _stream(self, send: Send) -> None:
        offset, last = self.span
        if offset > last:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        scratch = bytearray(min(CHUNK, last + 1 - offset))
        while offset <= last:
            data = await read_chunk(self.fd, min(CHUNK, last + 1 - offset), offset, scratch)
            if not data:
                raise OSError(f"file shrank while being served, at offset {offset}")
            offset += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": offset <= last})

    @staticmethod
    async def _watch(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


def _headers(name: str, info: os.stat_result, digest: str) -> dict[str, str]:
    raw = base64.b64encode(bytes.fromhex(digest)).decode()
    return {
        "accept-ranges": "bytes",
        "etag": f'"{digest}"',
        "repr-digest": f"sha-256=:{raw}:",
        "digest": f"sha-256={raw}",
        "last-modified": formatdate(info.st_mtime, usegmt=True),
        "cache-control": "no-transform",
        "content-type": "application/gzip",
        "content-disposition": f'attachment; filename="{name}"',
    }


async def _serve_file(request: Request) -> Response:
    state = request.app.state
    path = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("latin-1")
    name = path[1:]
    if not is_archive_name(name) or request.scope["path"] != path:
        if _SUSPICIOUS.search(path):
            return PlainTextResponse("bad path\n", status_code=400)
        return PlainTextResponse("not found\n", status_code=404)
    opened = _open_archive(state.storage_dir, name)
    if opened is None:
        return PlainTextResponse("not found\n", status_code=404)
    dir_fd, fd, info = opened
    try:
        try:
            digest = await state.digests.get(dir_fd, name, fd, info)
        finally:
            os.close(dir_fd)
        response = _respond(request, fd, name, info, digest, state.downloads)
    except BaseException:
        os.close(fd)
        raise
    if not isinstance(response, _FileBody):
        os.close(fd)
    return response


def _respond(
    request: Request, fd: int, name: str, info: os.stat_result, digest: str, downloads: DownloadRegistry
) -> Response:
    """The 200/206/304/416 answer for an opened archive."""
    headers = _headers(name, info, digest)
    etag, size = headers["etag"], info.st_size
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"etag": etag, "cache-control": headers["cache-control"]})
    span, status = (0, size - 1), 200
    range_header = request.headers.get("range")
    if range_header is not None and request.headers.get("if-range", etag) == etag:
        try:
            wanted = parse_range(range_header, size)
        except RangeNotSatisfiable:
            return PlainTextResponse(
                "range not satisfiable\n", status_code=416, headers={"content-range": f"bytes */{size}"}
            )
        if wanted is not None:
            span, status = wanted, 206
            headers["content-range"] = f"bytes {span[0]}-{span[1]}/{size}"
    headers["content-length"] = str(span[1] + 1 - span[0])
    return _FileBody(fd, span, status, headers, None if request.method == "HEAD" else (downloads, name))


class _AccessLog:
    """ASGI middleware writing one JSON line per HTTP request: method, path, status, bytes, ms, client."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, int] = {"status": 500, "bytes": 0}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                _log_access(scope, seen, started)


def _log_access(scope: Scope, seen: dict[str, int], started: float) -> None:
    client = scope.get("client")
    raw = scope.get("raw_path") or scope["path"].encode()
    record = {
        "method": scope["method"],
        "path": raw.decode("latin-1")[:512],
        "status": seen["status"],
        "bytes": seen["bytes"],
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "client": f"{client[0]}:{client[1]}" if client else None,
    }
    access_logger.info(json.dumps(record, separators=(",", ":")))


async def _retention_loop(config: LocalResultServer, downloads: DownloadRegistry, interval: float) -> None:
    while True:
        try:
            await anyio.to_thread.run_sync(
                partial(
                    prune,
                    Path(config.storage_dir).expanduser(),
                    max_age=config.max_age,
                    max_total_bytes=config.max_total_bytes,
                    in_use=downloads.snapshot(),
                )
            )
        except Exception:  # a bad pass must not stop the server; the next one retries
            logger.exception("retention pass over %s failed", config.storage_dir)
        await anyio.sleep(interval)


def create_app(config: LocalResultServer, *, prune_interval: float | None = None) -> Starlette:
    """The ASGI app serving `config.storage_dir`; prunes every `prune_interval` s (default: the block's)
    when retention is set."""
    interval = config.prune_interval if prune_interval is None else prune_interval

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            if config.max_age is not None or config.max_total_bytes is not None:
                group.start_soon(_retention_loop, config, app.state.downloads, interval)
            yield
            group.cancel_scope.cancel()

    app = Starlette(
        routes=[Route("/{path:path}", _serve_file, methods=["GET", "HEAD"])],
        middleware=[Middleware(_AccessLog)],
        lifespan=lifespan,
    )
    app.state.storage_dir = Path(config.storage_dir).expanduser()
    app.state.downloads = DownloadRegistry()
    app.state.digests = _Digests()
    return app


def _uvicorn_config(app: Starlette, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        timeout_keep_alive=5,
        **kwargs,
    )


def serve(
    config: LocalResultServer,
    *,
    host: str | None = None,
    port: int | None = None,
    prune_interval: float | None = None,
) -> None:
    """Run the result server in the foreground until interrupted (uvicorn); flags override the block.

    Logs go to stderr: the access log as bare JSON lines, uvicorn's and retention's as plain text.
    """
    _console_logging()
    app = create_app(config, prune_interval=prune_interval)
    host = config.host if host is None else host
    port = config.port if port is None else port
    uvicorn.Server(_uvicorn_config(app, host=host, port=port)).run()


class _ConsoleHandler(logging.StreamHandler[TextIO]):
    """stderr handler added by `serve()` (a class of its own so it is added only once)."""


def _console_logging() -> None:
    """Send this server's logs to stderr whatever Prefect did to the root logger (idempotent)."""
    formats = {
        access_logger.name: "%(message)s",
        logger.name: "%(asctime)s %(levelname)s %(name)s: %(message)s",
        "prefect_bacalhau_publish.retention": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        "uvicorn": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    }
    for name, layout in formats.items():
        named = logging.getLogger(name)
        if not any(isinstance(h, _ConsoleHandler) for h in named.handlers):
            handler = _ConsoleHandler()
            handler.setFormatter(logging.Formatter(layout))
            named.addHandler(handler)
        named.setLevel(logging.INFO)
        named.propagate = False


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def running_server(
    config: LocalResultServer,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    prune_interval: float | None = None,
    timeout: float = 15.0,
) -> Iterator[str]:
    """Run the result server in a background thread; yields its base URL once it accepts connections.

    `port=0` takes a free port (the socket is bound here, so there is no race for it).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        app = create_app(config, prune_interval=prune_interval)
        server = uvicorn.Server(_uvicorn_config(app, timeout_graceful_shutdown=5))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="result-server", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the result server stopped during startup; see the uvicorn log")
            if time.monotonic() > deadline:
                server.should_exit = True
                raise TimeoutError(f"the result server did not start within {timeout}s")
            time.sleep(0.005)  # polling the started flag
        try:
            yield f"http://{_url_host(host)}:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(timeout)
    finally:
        sock.close()


_T = TypeVar("_T", PublishedResult, str)


def _rebase(url: str, old: str, new: str) -> str:
    if url == old or url.startswith(old + "/"):
        return new + url[len(old) :]
    return url


def _rewrite(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {
            k: _rebase(v, old, new)
            if str(k).lower() == "url" and isinstance(v, str)
            else _rewrite(v, old, new)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v, old, new) for v in node]
    return node


def readdress(spec_or_text: _T, old_base: str, new_base: str) -> _T:
    """Rewrite result URLs under `old_base` (e.g. `http://10.0.0.5:6001`) to `new_base`.

    Takes a PublishedResult (returns a new one) or JSON text (every `URL` value in it, at any depth, is
    rewritten; returns JSON text). URLs under other bases are left alone.
    """
    old, new = old_base.rstrip("/"), new_base.rstrip("/")
    if isinstance(spec_or_text, PublishedResult):
        data = _rewrite(spec_or_text.to_bacalhau(), old, new)
        return PublishedResult.model_validate(data)
    return json.dumps(_rewrite(json.loads(spec_or_text), old, new))
