"""An httpx transport that reads the response while the request body is still being sent.

Kubo's `/api/v0/add` answers with one NDJSON line per file *while* it reads the multipart body. A client that
sends the whole body before reading (httpx's default HTTP/1.1 transport does) deadlocks once the unread
answer fills the socket buffers — about a hundred thousand files on loopback. This transport sends the body
from a worker thread and reads the response in the caller's thread (h11 over a plain socket, one connection
per request, as Kubo closes them anyway). Trailers such as `X-Stream-Error` land in
`response.extensions["trailers"]` once the body has been read.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
from collections.abc import Iterator
from typing import Any

import h11
import httpx

__all__ = ["DuplexTransport"]

_RECV = 256 * 1024


class _Exchange:
    """One request/response over one socket; the body is written by a daemon thread."""

    def __init__(self, sock: socket.socket, request: httpx.Request) -> None:
        self.sock = sock
        self.request = request
        self.conn = h11.Connection(h11.CLIENT)
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.trailers: dict[str, str] = {}
        # the body is produced in the caller's context (its reads count towards the caller's transfer)
        self.writer = threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._write_body,),
            name="kubo-request-body",
            daemon=True,
        )

    def send(self, event: h11.Event) -> None:
        with self.lock:
            data = self.conn.send(event)
        if data:
            self.sock.sendall(data)

    def _write_body(self) -> None:
        try:
            stream: Any = self.request.stream
            chunked = self.request.headers.get("transfer-encoding", "").lower() == "chunked"
            for chunk in stream:
                if not chunk:
                    continue
                if chunked:  # frame it here: h11 would copy every chunk into a new bytes object
                    self.sock.sendall(b"%x\r\n" % len(chunk))
                    self.sock.sendall(chunk)
                    self.sock.sendall(b"\r\n")
                else:
                    self.send(h11.Data(data=chunk))
            self.send(h11.EndOfMessage())
        except BaseException as exc:  # handed to the reading thread
            self.error = exc
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def next_event(self) -> Any:
        while True:
            with self.lock:
                event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(_RECV)
            except TimeoutError as exc:
                raise httpx.ReadTimeout(f"no answer within the timeout: {exc}", request=self.request) from exc
            except OSError as exc:
                self.raise_writer_error()
                raise httpx.ReadError(str(exc), request=self.request) from exc
            with self.lock:
                self.conn.receive_data(data)

    def raise_writer_error(self, *, include_os_errors: bool = True) -> None:
        """Re-raise what stopped the body (our own errors always; socket errors when asked)."""
        error = self.error
        if error is None or (isinstance(error, OSError) and not include_os_errors):
            return
        if isinstance(error, OSError):
            raise httpx.WriteError(f"sending the request failed: {error}", request=self.request) from error
        raise error

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.writer.is_alive():
            self.writer.join()


class _ResponseStream(httpx.SyncByteStream):
    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        while True:
            try:
                event = exchange.next_event()
            except h11.RemoteProtocolError as exc:
                exchange.raise_writer_error()
                raise httpx.RemoteProtocolError(str(exc), request=exchange.request) from exc
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                exchange.trailers.update((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
                exchange.raise_writer_error(include_os_errors=False)
                return
            else:  # ConnectionClosed before the end of the message
                exchange.raise_writer_error()
                raise httpx.RemoteProtocolError("connection closed mid-response", request=exchange.request)

    def close(self) -> None:
        self._exchange.close()


class DuplexTransport(httpx.BaseTransport):
    """Plain-HTTP/1.1 transport sending the request body concurrently with reading the response."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"DuplexTransport speaks plain http only, not {url.scheme}")
        try:
            sock = socket.create_connection((url.host, url.port or 80), timeout=self._timeout)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        exchange = _Exchange(sock, request)
        try:
            exchange.send(
                h11.Request(method=request.method, target=url.raw_path, headers=request.headers.raw)
            )
            exchange.writer.start()
            event = exchange.next_event()
            if not isinstance(event, h11.Response):
                exchange.raise_writer_error()
                raise httpx.RemoteProtocolError("connection closed before a response", request=request)
        except h11.RemoteProtocolError as exc:
            exchange.close()
            exchange.raise_writer_error()
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except BaseException:
            exchange.close()
            raise
        return httpx.Response(
            status_code=event.status_code,
            headers=event.headers,
            stream=_ResponseStream(exchange),
            extensions={"http_version": b"HTTP/1.1", "trailers": exchange.trailers},
        )
