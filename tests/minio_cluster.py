"""A distributed MinIO on 127.0.0.1 for tests: 4 server processes with one drive each, one erasure set.

Every process gets the same server list (`http://127.0.0.1:PORT/abs/drive`, one per node) and its own
`--address 127.0.0.1:PORT` (which says which drive is local) and console address, all on loopback. MinIO
refuses drives on the root disk in distributed mode ("drive is part of root drive, will not be used");
`MINIO_CI_CD=on`, the setting MinIO reads for CI and tests, turns that check off. With 4 drives the default
parity is EC:2, so an object's 2 data and 2 parity shards sit on the 4 nodes: any 2 serve reads (read
quorum) and 3 must take a write (write quorum: data + 1 when data == parity); MinIO's distributed write
locks likewise need 3 of the 4 nodes.

Inside a container (MinIO looks for `/.dockerenv`, `/run/.containerenv` or `KUBERNETES_SERVICE_HOST`)
MinIO will not decide by `--address` port which loopback URL is its own: it waits, forever, for
`127.0.0.1` to "resolve to a valid IP". Its `_MINIO_SERVER_LOCAL=HOST:PORT` names a node's own URL there;
outside a container MinIO ignores it and matches the `--address` port, so each node gets it always.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from prefect_bacalhau_publish.testing import (
    MINIO_PASSWORD,
    MINIO_USER,
    STARTUP_TIMEOUT,
    MinioServer,
    ServerStartError,
    _stop,
    binary,
    free_port,
    wait_ready,
)

if TYPE_CHECKING:
    from prefect_bacalhau_publish.blocks import S3Storage

__all__ = ["NODES", "MinioCluster"]

NODES = 4
PROBE_BUCKET = "pbp-cluster-probe"  # where `wait_writes_land` writes its probes
_STACK_FRAME = re.compile(r"\s+\d+: \S+:\d+:")  # `   3: /path/file.go:123:pkg.Func()` in MinIO's error logs
MiB = 1024 * 1024
POLL = 0.1  # seconds between two looks at a condition; every wait has a deadline


@dataclass
class MinioCluster:
    """`NODES` MinIO server processes forming one erasure set, their drives under `root`."""

    root: Path
    nodes: int = NODES
    user: str = MINIO_USER
    password: str = MINIO_PASSWORD
    ports: list[int] = field(default_factory=list)
    console_ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        taken: set[int] = set()
        while len(taken) < 2 * self.nodes:
            taken.add(free_port())
        ordered = sorted(taken)
        self.ports = self.ports or ordered[: self.nodes]
        self.console_ports = self.console_ports or ordered[self.nodes :]
        self.procs = [None] * self.nodes

    # layout -------------------------------------------------------------------------------------------
    def drive(self, node: int) -> Path:
        """Node `node`'s one drive (0-based node numbers)."""
        return self.root / f"data{node}"

    def log_path(self, node: int) -> Path:
        """Where node `node`'s output goes."""
        return self.root / f"node{node}.log"

    def endpoint(self, node: int = 0) -> str:
        """Node `node`'s S3 endpoint: every node serves the whole cluster."""
        return f"http://127.0.0.1:{self.ports[node]}"

    def server_urls(self) -> list[str]:
        """The drives as every node is told them: one URL per node, all on 127.0.0.1."""
        return [f"http://127.0.0.1:{self.ports[n]}{self.drive(n)}" for n in range(self.nodes)]

    def command(self, node: int) -> list[str]:
        """The command line of node `node`."""
        return [
            str(binary("minio")),
            "server",
            *self.server_urls(),
            "--address",
            f"127.0.0.1:{self.ports[node]}",
            "--console-address",
            f"127.0.0.1:{self.console_ports[node]}",
            "--quiet",
        ]

    def env(self, node: int) -> dict[str, str]:
        """Node `node`'s environment: the same `MINIO_*` values on every node (MinIO checks that they
        agree), and `_MINIO_SERVER_LOCAL` naming its own endpoint (see the module docstring)."""
        return {
            **os.environ,
            "MINIO_ROOT_USER": self.user,
            "MINIO_ROOT_PASSWORD": self.password,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CALLHOME_ENABLE": "off",
            "MINIO_CI_CD": "on",  # drives on the root disk are allowed (see the module docstring)
            "_MINIO_SERVER_LOCAL": f"127.0.0.1:{self.ports[node]}",
        }

    # processes ----------------------------------------------------------------------------------------
    def _spawn(self, node: int) -> subprocess.Popen[bytes]:
        self.drive(node).mkdir(parents=True, exist_ok=True)
        with open(self.log_path(node), "ab") as log:
            proc = subprocess.Popen(
                self.command(node), stdout=log, stderr=subprocess.STDOUT, env=self.env(node)
            )
        self.procs[node] = proc
        return proc

    def start(self) -> MinioCluster:
        """Start every node, then wait until each answers `/minio/health/cluster` (write quorum) and all
        drives are online; on failure the other nodes are stopped and the error carries the logs' tails."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            for node in range(self.nodes):
                self._spawn(node)
            for node in range(self.nodes):
                self.wait_healthy(node)
            for node in range(self.nodes):
                self.wait_drives_online(self.nodes, via=node)
            self.client().create_bucket(Bucket=PROBE_BUCKET)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, node: int, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until node `node` answers `/minio/health/cluster` with 200 (ServerStartError otherwise)."""
        proc = self.procs[node]
        if proc is None:
            raise ServerStartError(f"MinIO node {node} was never started")
        probe = httpx.Request("GET", f"{self.endpoint(node)}/minio/health/cluster")
        try:
            wait_ready(f"MinIO node {node}", proc, self.log_path(node), probe, timeout=timeout)
        except ServerStartError as exc:
            raise ServerStartError(f"{exc}\n{self.log_tails()}") from None

    def up(self) -> list[int]:
        """The nodes whose process is alive."""
        return [node for node in range(self.nodes) if self.running(node)]

    def running(self, node: int) -> bool:
        """True while node `node`'s process is alive."""
        proc = self.procs[node]
        return proc is not None and proc.poll() is None

    def kill(self, node: int) -> None:
        """SIGKILL node `node`, as a crash or a pulled power cord would, and reap it."""
        proc = self.procs[node]
        assert proc is not None and proc.poll() is None, f"node {node} is not running"
        proc.kill()
        proc.wait(timeout=30)

    def restart(self, node: int, writers: tuple[int, ...] = (0,)) -> None:
        """Start node `node` again on its port and drive; return once it is healthy, every running node
        counts the drives of all running nodes online, and writes through each running node of `writers`
        (node 0, the tests' S3 endpoint, by default) land on every running drive (`wait_writes_land`)."""
        assert not self.running(node), f"node {node} is still running"
        self._spawn(node)
        self.wait_healthy(node)
        up = self.up()
        for via in up:
            self.wait_drives_online(len(up), via=via)
        for via in writers:
            if via in up:
                self.wait_writes_land(via)

    def ensure_all_up(self) -> None:
        """Restart any node that is down (a failed test may leave one killed), then wait until writes
        through node 0 reach every drive."""
        for node in range(self.nodes):
            if not self.running(node):
                self.restart(node)
        self.wait_writes_land(0)

    def stop(self) -> None:
        """Stop every node (their drives stay in `root`)."""
        for proc in self.procs:
            if proc is not None:
                _stop(proc)

    def remove(self) -> None:
        """Stop every node and delete the drives and logs."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # observation --------------------------------------------------------------------------------------
    def log_tails(self, lines: int = 20) -> str:
        """The last `lines` lines of every node's log (without Go stack frames), for failure messages."""
        out = []
        for node in range(self.nodes):
            try:
                kept = [
                    line
                    for line in self.log_path(node).read_text(errors="replace").splitlines()
                    if line.strip() and not _STACK_FRAME.match(line)
                ]
                text = "\n".join(kept[-lines:])
            except OSError:
                text = "(no log)"
            out.append(f"--- node {node} ({self.endpoint(node)}) ---\n{text}")
        return "\n".join(out)

    def health(self, node: int, path: str = "cluster", **params: str) -> httpx.Response:
        """GET `/minio/health/<path>` on node `node` (e.g. `cluster`, `cluster/read`, `live`)."""
        url = f"{self.endpoint(node)}/minio/health/{path}"
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            return client.get(url, params=params)

    def wait_health(
        self, node: int, status: int, path: str = "cluster", timeout: float = 30.0
    ) -> httpx.Response:
        """Poll `/minio/health/<path>` on node `node` until it answers `status` (MinIO computes it from drive
        states it caches for a second); AssertionError with the logs after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.health(node, path)
            if answer.status_code == status:
                return answer
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"/minio/health/{path} on node {node} answers {answer.status_code}, not {status}, after "
                    f"{timeout:.0f}s\n{self.log_tails()}"
                )
            time.sleep(POLL)  # poll interval; the condition is MinIO's answer

    def admin_info(self, via: int = 0) -> dict[str, Any]:
        """MinIO's admin `info` (servers, drives, backend parity) as node `via` sees the cluster."""
        from minio.credentials.providers import StaticProvider
        from minio.minioadmin import MinioAdmin

        admin = MinioAdmin(
            endpoint=f"127.0.0.1:{self.ports[via]}",
            credentials=StaticProvider(self.user, self.password),
            secure=False,
        )
        info: dict[str, Any] = json.loads(admin.info())
        return info

    def drives_online(self, via: int = 0) -> int:
        """How many drives node `via` counts online."""
        return int(self.admin_info(via)["backend"]["onlineDisks"])

    def wait_drives_online(self, count: int, via: int = 0, timeout: float = 60.0) -> None:
        """Wait until node `via` counts exactly `count` drives online (AssertionError with the logs
        otherwise): after a kill MinIO notices the drive gone, after a restart it reconnects it."""
        deadline = time.monotonic() + timeout
        seen: object = None
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # a node still starting may refuse the admin call
                seen = self.drives_online(via)
                if seen == count:
                    return
            time.sleep(POLL)  # poll interval; the condition is MinIO's own drive count
        raise AssertionError(
            f"node {via} counts {seen} drives online, not {count}, after {timeout:.0f}s\n{self.log_tails()}"
        )

    def wait_writes_land(self, via: int = 0, timeout: float = 60.0) -> None:
        """Wait until an object written through node `via` lands on the drive of every running node.

        A restarted node's drive counts as online (`wait_drives_online`) as soon as the internode grid
        reconnects, but the node coordinating a write reconnects its storage REST client, which streams
        the shards of every object too large to inline in `xl.meta`, seconds later ("Marking ... offline
        temporarily", then "re-connected in 5.1s" in its log). Until then it writes such objects to the
        other drives only, and a second node lost in that window takes the write quorum with it
        (SlowDownWrite). So this writes 1 MiB probes (512 KiB shards, over the 128 KiB inline limit) through
        `via` until one has its shard (`<drive>/<bucket>/<key>/<data dir>/part.1`) on every running drive,
        or raises AssertionError with the logs after `timeout` seconds."""
        client = self.client(via)
        body = os.urandom(MiB)
        deadline = time.monotonic() + timeout
        attempt = 0
        missing: list[int] = []
        while time.monotonic() < deadline:
            attempt += 1
            key = f"probe-{via}-{attempt}"
            with contextlib.suppress(Exception):  # no quorum yet: try again
                client.put_object(Bucket=PROBE_BUCKET, Key=key, Body=body)
                missing = [
                    n for n in self.up() if not any((self.drive(n) / PROBE_BUCKET / key).glob("*/part.1"))
                ]
                client.delete_object(Bucket=PROBE_BUCKET, Key=key)
                if not missing:
                    return
            time.sleep(POLL)  # poll interval; the condition is the probe's shards on the drives
        raise AssertionError(
            f"writes through node {via} still miss the drives of nodes {missing} "
            f"after {timeout:.0f}s\n{self.log_tails()}"
        )

    # clients ------------------------------------------------------------------------------------------
    def server(self, node: int = 0) -> MinioServer:
        """A `MinioServer` view of node `node` (never started through it), for its `client()`."""
        return MinioServer(self.drive(node), port=self.ports[node], user=self.user, password=self.password)

    def storage(
        self, node: int = 0, client_config: dict[str, Any] | None = None, **settings: Any
    ) -> S3Storage:
        """An `S3Storage` block on node `node`'s endpoint with the root credentials, as `MinioServer.storage`
        makes it (more fields in `settings`); `client_config` is botocore `Config` arguments for its boto3
        clients (`aws_client_parameters.config` of the credentials block), e.g. `{"read_timeout": 10}`."""
        from prefect_aws import MinIOCredentials
        from prefect_aws.client_parameters import AwsClientParameters

        from prefect_bacalhau_publish.blocks import S3Storage

        credentials = MinIOCredentials(
            minio_root_user=self.user,
            minio_root_password=SecretStr(self.password),
            aws_client_parameters=AwsClientParameters(config=client_config),
        )
        return S3Storage(
            credentials=credentials, endpoint_url=self.endpoint(node), region_name="us-east-1", **settings
        )

    def client(self, node: int = 0) -> Any:
        """A boto3 S3 client on node `node`, signed with the root credentials."""
        return self.server(node).client()
