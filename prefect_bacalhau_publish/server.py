"""The local result server: a small Starlette app that serves the storage folder's archives, and nothing else.

GET and HEAD of `/<executionID>.tar.gz` only (top-level regular files matching `ARCHIVE_NAME`, opened with
`O_NOFOLLOW` so a planted symlink is never followed), with single `Range` requests, `ETag` /
`If-None-Match` / `If-Range`, and `Repr-Digest` (RFC 9530) plus `Digest` (RFC 3230) carrying the file's
SHA-256 (from its sidecar, or hashed once when there is none). No directory listing; every other path is 404 (or 400 when it smells of traversal).
One JSON access-log line per request goes to the `prefect_bacalhau_publish.server.access` logger.

Bytes are served by Starlette's `FileResponse` (HEAD, single and multiple ranges, `If-Range`, 416, client
disconnects) reading from the descriptor opened here; what is ours is the safe open, the SHA-256 `ETag` and
digest headers, `If-None-Match`, retention, and the JSON access log (uvicorn's names no byte counts).

Re-addressing: the server answers for any `Host` header, so when a node's address or port changes the
files stay reachable at the new address and only the URLs in published specs need rewriting
(`readdress.readdress()`, re-exported here).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .accesslog import AccessLog, access_logger
from .blocks import LocalResultServer
from .naming import is_archive_name
from .readdress import readdress
from .retention import prune
from .served import (
    ArchiveResponse,
    Digests,
    DownloadRegistry,
    RangeNotSatisfiable,
    archive_headers,
    etag_matches,
    open_archive,
    parse_range,
    read_chunk,
)

__all__ = [
    "DownloadRegistry",
    "RangeNotSatisfiable",
    "create_app",
    "parse_range",
    "read_chunk",
    "readdress",
    "running_server",
    "serve",
]

logger = logging.getLogger("prefect_bacalhau_publish.server")
_SUSPICIOUS = re.compile(r"%|\\|\.\.|[\x00-\x1f\x7f]|^/[/.]|://")


async def _serve_file(request: Request) -> Response:
    state = request.app.state
    path = (request.scope.get("raw_path") or request.scope["path"].encode()).decode("latin-1")
    name = path[1:]
    if not is_archive_name(name) or request.scope["path"] != path:
        if _SUSPICIOUS.search(path):
            return PlainTextResponse("bad path\n", status_code=400)
        return PlainTextResponse("not found\n", status_code=404)
    opened = open_archive(state.storage_dir, name)
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
    if not isinstance(response, ArchiveResponse):
        os.close(fd)
    return response


def _respond(
    request: Request, fd: int, name: str, info: os.stat_result, digest: str, downloads: DownloadRegistry
) -> Response:
    """304 for a matching `If-None-Match`, else the archive through `ArchiveResponse` (200/206/416)."""
    headers = archive_headers(name, info, digest)
    etag = headers["etag"]
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={"etag": etag, "cache-control": headers["cache-control"]})
    return ArchiveResponse(fd, request.app.state.storage_dir / name, info, headers, (downloads, name))


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
        middleware=[Middleware(AccessLog)],
        lifespan=lifespan,
    )
    app.state.storage_dir = Path(config.storage_dir).expanduser()
    app.state.downloads = DownloadRegistry()
    app.state.digests = Digests()
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

    Before starting, a missing storage folder is created (mode 0700, as the local publisher creates it) and
    the port is bound, so a storage path that is a file, or a port in use or out of range, raises an OSError
    or ValueError with a one-line reason instead of starting. Logs go to stderr, each line once: the access log
    as bare JSON lines, uvicorn's and retention's as plain text.
    """
    host = config.host if host is None else host
    port = config.port if port is None else port
    _console_logging()
    storage = _storage_folder(Path(config.storage_dir).expanduser())
    with contextlib.closing(_bind(host, port)) as sock:
        server = uvicorn.Server(_uvicorn_config(create_app(config, prune_interval=prune_interval)))
        sock.listen(server.config.backlog)  # connections queue from here on, so the line below means ready
        base = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
        logger.info("running on %s, serving %s (Ctrl-C to stop)", base, storage)
        server.run(sockets=[sock])
    if not server.started:
        raise RuntimeError("the result server stopped during startup: see the log lines above")


def _storage_folder(storage: Path) -> Path:
    """`storage`, created (0700) when missing; OSError when it is not a readable folder."""
    if storage.exists() and not storage.is_dir():
        raise NotADirectoryError(f"storage folder {storage} is a file, not a folder: check --storage-dir")
    try:
        if not storage.exists():
            storage.mkdir(mode=0o700, parents=True)
            storage.chmod(0o700)  # whatever the umask, as the local publisher creates it
            logger.info("created the storage folder %s", storage)
    except OSError as exc:
        raise OSError(f"cannot create the storage folder {storage}: {exc.strerror or exc}") from None
    if not os.access(storage, os.R_OK | os.X_OK):
        raise PermissionError(f"storage folder {storage} is not readable: check its permissions")
    return storage


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (0 takes a free one); OSError/ValueError with a one-line reason."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range: give 0 to 65535 (0 takes a free port)")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                f"port {port} on {host} is in use: stop what listens there or choose another port (--port)"
            ) from None
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


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
        for handler in list(named.handlers):  # Prefect's console handler on `uvicorn` would print it twice
            if not isinstance(handler, _ConsoleHandler):
                named.removeHandler(handler)
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
    sock = _bind(host, port)
    try:
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
