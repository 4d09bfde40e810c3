"""The local result server under 500 concurrent requests: full GETs, HEADs and Range GETs of a ~1 MiB result.

The server is the real CLI (`prefect-bacalhau serve`) in its own process, so the client's event loop cannot
starve it. Every answer is checked byte for byte against the archive on disk; the server's own access log
must account for every request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from prefect_bacalhau_publish.blocks import LocalResultServer
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec
from prefect_bacalhau_publish.testing import ResultServerProcess

REQUESTS = 500
KINDS = ("get", "head", "range")
DEADLINE = 120.0


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[ResultServerProcess]:
    with ResultServerProcess(tmp_path / "store", tmp_path / "serve.log") as server:
        yield server


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: int
    received: int  # body bytes
    problem: str | None  # None when the answer was verified


async def one_request(
    client: httpx.AsyncClient, url: str, kind: str, blob: bytes, digest: str, span: tuple[int, int]
) -> Outcome:
    etag = f'"{hashlib.sha256(blob).hexdigest()}"'
    try:
        if kind == "head":
            response = await client.head(url)
            ok = (
                response.status_code == 200
                and response.content == b""
                and response.headers["content-length"] == str(len(blob))
                and response.headers["etag"] == etag
                and response.headers["accept-ranges"] == "bytes"
            )
        elif kind == "get":
            response = await client.get(url)
            ok = (
                response.status_code == 200
                and response.content == blob
                and response.headers["repr-digest"] == f"sha-256=:{digest}:"
            )
        else:
            first, last = span
            response = await client.get(url, headers={"range": f"bytes={first}-{last}"})
            ok = (
                response.status_code == 206
                and response.content == blob[first : last + 1]
                and response.headers["content-range"] == f"bytes {first}-{last}/{len(blob)}"
            )
    except httpx.HTTPError as exc:
        return Outcome(kind, 0, 0, f"{type(exc).__name__}: {exc}")
    problem = None if ok else f"unexpected answer {response.status_code} {dict(response.headers)}"
    return Outcome(kind, response.status_code, len(response.content), problem)


async def storm(url: str, blob: bytes) -> tuple[list[Outcome], int]:
    """Fire every request at once on its own connection; returns the outcomes and the most in flight."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    rng = random.Random(20250501)
    plan = []
    for index in range(REQUESTS):
        first = rng.randrange(len(blob))
        plan.append((KINDS[index % len(KINDS)], (first, rng.randrange(first, len(blob)))))
    in_flight = peak = 0

    async def tracked(client: httpx.AsyncClient, kind: str, span: tuple[int, int]) -> Outcome:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await one_request(client, url, kind, blob, digest, span)
        finally:
            in_flight -= 1

    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    timeout = httpx.Timeout(DEADLINE, pool=DEADLINE)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(tracked(client, kind, span) for kind, span in plan)), DEADLINE
        )
    return list(outcomes), peak


@pytest.mark.slow
def test_five_hundred_concurrent_requests(served: ResultServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "result"
    (folder / "outputs").mkdir(parents=True)
    (folder / "stdout").write_text("load\n")
    (folder / "outputs" / "blob.bin").write_bytes(os.urandom(1 << 20))
    port = served.port
    config = LocalResultServer(storage_dir=served.storage, port=port, public_address="loopback")
    result = publish_to(
        folder, PublisherSpec.model_validate({"Type": "local"}), ExecutionContext.new(), local=config
    )
    url = result.to_bacalhau()["Params"]["URL"]
    assert url.startswith(served.base_url)
    blob = (config.storage_dir / url.rpartition("/")[2]).read_bytes()
    assert len(blob) > 1 << 20

    started = time.monotonic()
    outcomes, peak = asyncio.run(storm(url, blob))
    elapsed = time.monotonic() - started

    problems = [o for o in outcomes if o.problem is not None]
    assert problems == [], problems[:5]
    assert elapsed < DEADLINE
    assert Counter(o.kind for o in outcomes) == {"get": 167, "head": 167, "range": 166}
    assert peak >= REQUESTS // 2, f"only {peak} requests were ever in flight together"
    assert served.proc is not None and served.proc.poll() is None  # still up

    # The server accounts for every request and every byte it sent.
    path = "/" + url.rpartition("/")[2]
    deadline = time.monotonic() + DEADLINE
    while True:
        lines = [line for line in served.access_lines() if line["path"] == path]  # not the readiness probe
        if len(lines) >= REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # poll interval; each line is written just after its response ends
    assert len(lines) == REQUESTS
    assert Counter(line["status"] for line in lines) == {200: 334, 206: 166}
    assert sum(line["bytes"] for line in lines) == sum(o.received for o in outcomes)
    assert len({line["client"] for line in lines}) >= REQUESTS // 2  # many distinct connections
    print(
        f"\n{REQUESTS} requests in {elapsed:.1f}s, peak {peak} in flight, "
        f"{sum(o.received for o in outcomes)} body bytes verified, "
        f"{len({line['client'] for line in lines})} client connections"
    )
