"""The result server's access log: one JSON line per HTTP request (method, path, status, bytes sent,
milliseconds, client) on the `prefect_bacalhau_publish.server.access` logger; uvicorn's own access log
names no byte counts or durations."""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog", "access_logger"]

access_logger = logging.getLogger("prefect_bacalhau_publish.server.access")


class AccessLog:
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
