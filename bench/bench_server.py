"""Loopback load test of the local result server beside `python -m http.server` on the same file.

Each server runs in its own process on 127.0.0.1; --clients concurrent downloads (httpx AsyncClient,
one connection each) fetch a --size-mib MiB random archive, and every body is checked (status, length,
SHA-256). Our server must finish with 0 errors (exit code 1 otherwise); http.server's errors are reported
by kind (its listen backlog is 5, so most of 200 simultaneous connects wait on SYN retransmits).

    .venv/bin/python bench/bench_server.py --clients 200 --size-mib 10 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
NAME = "e-bench.tar.gz"
OUR_SERVER = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from prefect_bacalhau_publish.blocks import LocalResultServer
from prefect_bacalhau_publish.server import running_server
with running_server(LocalResultServer(storage_dir=Path(sys.argv[1]))) as base:
    print(base, flush=True)
    sys.stdin.read()
"""


@dataclass
class Round:
    server: str
    seconds: float
    errors: Counter[str]
    latencies: list[float]
    total_bytes: int

    @property
    def mib_s(self) -> float:
        return self.total_bytes / (1 << 20) / self.seconds


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                client.head(url)
                return
            except httpx.TransportError:
                time.sleep(0.05)  # polling readiness
    raise RuntimeError(f"{url} not ready after {timeout}s")


def start_ours(storage: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OUR_SERVER, str(storage)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    assert proc.stdout is not None
    base = proc.stdout.readline().decode().strip()  # printed once the server accepts connections
    if not base:
        raise RuntimeError("our server did not start")
    return proc, base


def start_http_server(storage: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(storage), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/{NAME}", proc)
    return proc, base


async def load(url: str, clients: int, size: int, digest: str) -> tuple[float, Counter[str], list[float]]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(300.0)
    errors: Counter[str] = Counter()
    latencies: list[float] = []

    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:

        async def one() -> None:
            started = time.perf_counter()
            try:
                sha, got = hashlib.sha256(), 0
                async with client.stream("GET", url) as response:
                    async for chunk in response.aiter_raw(1 << 20):
                        sha.update(chunk)
                        got += len(chunk)
                if response.status_code != 200 or got != size or sha.hexdigest() != digest:
                    errors[f"bad body (HTTP {response.status_code}, {got} bytes)"] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        return time.perf_counter() - started, errors, latencies


def run(name: str, storage: Path, clients: int, size: int, digest: str) -> Round:
    proc, base = start_ours(storage) if name == "prefect-bacalhau-publish" else start_http_server(storage)
    try:
        seconds, errors, latencies = asyncio.run(load(f"{base}/{NAME}", clients, size, digest))
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.terminate()
        proc.wait(10)
    return Round(name, seconds, errors, latencies, clients * size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--size-mib", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        storage = Path(tmp)
        data = os.urandom(size)
        (storage / NAME).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        rounds: list[Round] = []
        for _ in range(args.rounds):
            for name in ("prefect-bacalhau-publish", "python -m http.server"):
                rounds.append(run(name, storage, args.clients, size, digest))
                r = rounds[-1]
                failed = ", ".join(f"{n} {kind}" for kind, n in r.errors.items()) or "0 errors"
                print(f"  {name}: {r.seconds:.2f}s, {r.mib_s:.0f} MiB/s, {failed}", file=sys.stderr)
    print(
        f"\n{args.clients} concurrent downloads of a {args.size_mib} MiB file over loopback, {os.cpu_count()} CPUs\n"
    )
    print("| server | best MiB/s | median wall s | p50 latency s | p95 latency s | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    ok = True
    for name in ("prefect-bacalhau-publish", "python -m http.server"):
        mine = [r for r in rounds if r.server == name]
        lat = sorted(x for r in mine for x in r.latencies)
        errors = sum(r.errors.total() for r in mine)
        print(
            f"| {name} | {max(r.mib_s for r in mine):.0f} | {statistics.median(r.seconds for r in mine):.2f} "
            f"| {lat[len(lat) // 2]:.2f} | {lat[int(len(lat) * 0.95)]:.2f} | {errors} |"
        )
        if name == "prefect-bacalhau-publish" and errors:
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
