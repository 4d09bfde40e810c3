"""Real MinIO and Kubo servers on 127.0.0.1 for tests, benchmarks and the demo.

The binaries are built once by `scripts/test-servers` into a cache folder outside the clone
(`$PBP_SERVERS_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/prefect-bacalhau-publish/bin`).
A server that cannot start raises `ServerStartError` with the tail of its log: never a silent skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import SecretStr

from .testcerts import throwaway_tls

if TYPE_CHECKING:
    from .blocks import S3Storage

MINIO_USER = "pbp-test-user"
MINIO_PASSWORD = "pbp-test-password-0123456789"  # a throwaway value for throwaway local servers
STARTUP_TIMEOUT = 90.0


class ServerStartError(RuntimeError):
    """A test server binary is missing or the server did not become ready."""


def binary_dir() -> Path:
    """The cache folder holding the `minio` and `ipfs` binaries."""
    override = os.environ.get("PBP_SERVERS_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "prefect-bacalhau-publish" / "bin"


def binary(name: str) -> Path:
    """Path of a cached server binary; raises ServerStartError when it has not been built."""
    path = binary_dir() / name
    if not os.access(path, os.X_OK):
        raise ServerStartError(f"{path} is missing: run scripts/test-servers (make test does) to build it")
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_ready(
    name: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    probe: httpx.Request,
    ready: int = 200,
    verify: ssl.SSLContext | bool = True,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Poll `probe` until it answers `ready`; raises ServerStartError (with the log's tail) when `proc`
    exits first or `timeout` seconds pass, and kills `proc` then."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False, verify=verify) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(f"{name} exited with {proc.returncode}:\n{_log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.send(probe).status_code == ready:
                    return
            time.sleep(0.1)  # poll interval, not synchronisation: readiness is the health answer
    proc.kill()
    raise ServerStartError(f"{name} not ready after {timeout:.0f}s:\n{_log_tail(log)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@dataclass
class MinioServer:
    """A single-drive MinIO server on 127.0.0.1 with its data in `data_dir`."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    console_port: int = field(default_factory=free_port)
    user: str = MINIO_USER
    password: str = MINIO_PASSWORD
    proc: subprocess.Popen[bytes] | None = None
    ca_file: Path | None = None  # set by `with_tls`: MinIO then serves https with a certificate it signs

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        scheme = "https" if self.ca_file is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def with_tls(self) -> MinioServer:
        """Serve https with a certificate for 127.0.0.1 from a throwaway CA (`ca_file`), before `start`."""
        certs = self.data_dir.parent / f"minio-{self.port}-certs"
        self.ca_file = throwaway_tls(certs, certs / "public.crt", certs / "private.key")
        return self

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir.parent / f"minio-{self.port}.log"

    def start(self) -> MinioServer:
        """Start the server and wait for `/minio/health/live`."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MINIO_ROOT_USER": self.user,
            "MINIO_ROOT_PASSWORD": self.password,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            "MINIO_CALLHOME_ENABLE": "off",
        }
        cmd = [
            str(binary("minio")),
            "server",
            str(self.data_dir),
            "--address",
            f"127.0.0.1:{self.port}",
            "--console-address",
            f"127.0.0.1:{self.console_port}",
            "--quiet",
        ]
        if self.ca_file is not None:
            cmd += ["--certs-dir", str(self.ca_file.parent)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        probe = httpx.Request("GET", f"{self.endpoint}/minio/health/live")
        verify = ssl.create_default_context(cafile=self.ca_file) if self.ca_file is not None else True
        wait_ready("MinIO", self.proc, self.log_path, probe, verify=verify)
        return self

    def stop(self) -> None:
        """Stop the server (its data stays in `data_dir`)."""
        if self.proc is not None:
            _stop(self.proc)

    def storage(self, **settings: Any) -> S3Storage:
        """An `S3Storage` block for this server with the root credentials (more fields in `settings`)."""
        from prefect_aws import MinIOCredentials

        from .blocks import S3Storage

        credentials = MinIOCredentials(
            minio_root_user=self.user,
            minio_root_password=SecretStr(self.password),
            aws_client_parameters=self.client_parameters(),
        )
        return S3Storage(
            credentials=credentials, endpoint_url=self.endpoint, region_name="us-east-1", **settings
        )

    def limited_user(
        self, name: str, actions: list[str], bucket: str, *, on_bucket: bool = False
    ) -> S3Storage:
        """Create user `name` (through MinIO's admin API) allowed only `actions` on `bucket`'s objects (or on
        the bucket itself with `on_bucket`, e.g. `s3:ListBucket`), and return an `S3Storage` signed as it."""
        from minio.credentials.providers import StaticProvider
        from minio.minioadmin import MinioAdmin
        from prefect_aws import AwsCredentials

        from .blocks import S3Storage

        admin = MinioAdmin(
            endpoint=f"127.0.0.1:{self.port}",
            credentials=StaticProvider(self.user, self.password),
            secure=self.ca_file is not None,
            cert_check=False,  # test scaffolding on loopback; the clients under test verify the CA
        )
        secret = f"{name}-secret-0123456789"
        admin.user_add(name, secret)
        resource = f"arn:aws:s3:::{bucket}" if on_bucket else f"arn:aws:s3:::{bucket}/*"
        statement = {"Effect": "Allow", "Action": actions, "Resource": [resource]}
        admin.policy_add(name, policy={"Version": "2012-10-17", "Statement": [statement]})
        admin.attach_policy([name], user=name)
        credentials = AwsCredentials(
            aws_access_key_id=name,
            aws_secret_access_key=SecretStr(secret),
            aws_client_parameters=self.client_parameters(),
        )
        return S3Storage(credentials=credentials, endpoint_url=self.endpoint, region_name="us-east-1")

    def client(self) -> object:
        """A boto3 S3 client for this server, signed with the root credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.user,
            aws_secret_access_key=self.password,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
            verify=str(self.ca_file) if self.ca_file is not None else None,
        )

    def client_parameters(self) -> Any:
        """prefect-aws `AwsClientParameters` that trust this server's CA (defaults without TLS)."""
        from prefect_aws.client_parameters import AwsClientParameters

        if self.ca_file is None:
            return AwsClientParameters()
        return AwsClientParameters(verify_cert_path=self.ca_file)


LOOPBACK_ONLY: dict[str, Any] = {
    "Bootstrap": [],
    "Routing.Type": "none",
    "Discovery.MDNS.Enabled": False,
    "AutoConf.Enabled": False,
    "AutoTLS.Enabled": False,
    "Swarm.RelayClient.Enabled": False,
    "Swarm.RelayService.Enabled": False,
    "Swarm.Transports.Network.Relay": False,
    "Swarm.EnableHolePunching": False,
    "Swarm.DisableNatPortMap": True,
    "AutoNAT.ServiceMode": "disabled",
    "HTTPRetrieval.Enabled": False,
    "Plugins.Plugins.telemetry.Config": {"Mode": "off"},
}
"""`ipfs config --json` settings of an online (`KuboServer.online`) node that never reaches past 127.0.0.1: no
bootstrap peers, no routing (DHT or HTTP routers), no mDNS, no AutoConf download, no AutoTLS, no relays
or hole punching, no NAT port mapping, no AutoNAT service, no HTTP retrieval, no telemetry. Its swarm
listens on one loopback port; it talks only to the peers it is told to connect to (`KuboServer.connect`)."""


@dataclass
class KuboServer:
    """A Kubo (`ipfs`) daemon, everything on 127.0.0.1, its repo in `repo_dir`: offline by default; with
    `online`, its swarm listens on 127.0.0.1:`swarm_port` and it exchanges blocks (bitswap) only with the
    peers it is connected to (`connect`), under `LOOPBACK_ONLY`."""

    repo_dir: Path
    auth: str | None = None  # Authorization header for the readiness probe, when the API requires one
    config: dict[str, Any] = field(default_factory=dict)  # extra `ipfs config --json KEY VALUE` before start
    proc: subprocess.Popen[bytes] | None = None
    api_url: str = ""
    gateway_url: str = ""
    online: bool = False  # no `--offline`: the swarm is on, loopback only (LOOPBACK_ONLY wins over `config`)
    swarm_port: int = 0  # with `online`: the swarm's TCP port on 127.0.0.1 (0: a free one, chosen at start)

    @property
    def log_path(self) -> Path:
        """Where the daemon's output goes."""
        return self.repo_dir.parent / f"kubo-{self.repo_dir.name}.log"

    def _ipfs(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "IPFS_PATH": str(self.repo_dir)}
        return subprocess.run([str(binary("ipfs")), *args], env=env, capture_output=True, check=False)

    def start(self) -> KuboServer:
        """Init a repo with the `test` profile on free loopback ports and start `ipfs daemon` (`--offline` unless
        `online`)."""
        if not (self.repo_dir / "config").exists():
            done = self._ipfs("init", "--profile", "test")
            if done.returncode != 0:
                raise ServerStartError(f"ipfs init failed: {done.stderr.decode(errors='replace')}")
        api, gateway = free_port(), free_port()
        settings = {
            **self.config,
            "Addresses.API": f"/ip4/127.0.0.1/tcp/{api}",
            "Addresses.Gateway": f"/ip4/127.0.0.1/tcp/{gateway}",
        }
        if self.online:
            self.swarm_port = self.swarm_port or free_port()
            settings |= {**LOOPBACK_ONLY, "Addresses.Swarm": [f"/ip4/127.0.0.1/tcp/{self.swarm_port}"]}
        for key, value in settings.items():
            done = self._ipfs("config", "--json", key, json.dumps(value))
            if done.returncode != 0:
                raise ServerStartError(f"ipfs config {key} failed: {done.stderr.decode(errors='replace')}")
        (self.repo_dir / "api").unlink(missing_ok=True)
        env = {**os.environ, "IPFS_PATH": str(self.repo_dir)}
        cmd = [str(binary("ipfs")), "daemon"]
        if self.online:
            env["IPFS_TELEMETRY"] = "off"
        else:
            cmd.append("--offline")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.api_url = f"http://127.0.0.1:{api}"
        self.gateway_url = f"http://127.0.0.1:{gateway}"
        headers = {"Authorization": self.auth} if self.auth else {}
        probe = httpx.Request("POST", f"{self.api_url}/api/v0/version", headers=headers)
        wait_ready("Kubo", self.proc, self.log_path, probe)
        return self

    @property
    def api_multiaddr(self) -> str:
        """The RPC API address as Kubo writes it into `$IPFS_PATH/api`."""
        return (self.repo_dir / "api").read_text().strip()

    def stop(self) -> None:
        """Stop the daemon."""
        if self.proc is not None:
            _stop(self.proc)

    @property
    def peer_id(self) -> str:
        """The node's peer ID (`Identity.PeerID` in its repo's config)."""
        return str(json.loads((self.repo_dir / "config").read_text())["Identity"]["PeerID"])

    @property
    def swarm_multiaddr(self) -> str:
        """`/ip4/127.0.0.1/tcp/<swarm_port>/p2p/<peer_id>`, to connect to this (`online`) node."""
        if not self.online or not self.swarm_port:
            raise ServerStartError("only a started online KuboServer has a swarm address")
        return f"/ip4/127.0.0.1/tcp/{self.swarm_port}/p2p/{self.peer_id}"

    def _rpc(self, path: str, **params: str) -> Any:
        headers = {"Authorization": self.auth} if self.auth else {}
        answer = httpx.post(
            f"{self.api_url}/api/v0/{path}", params=params, headers=headers, timeout=30.0, trust_env=False
        )
        if answer.status_code != 200:
            raise ServerStartError(f"Kubo {path} failed ({answer.status_code}): {answer.text.strip()}")
        return answer.json()

    def connect(self, other: KuboServer) -> None:
        """`ipfs swarm connect` to `other` (an online node) on loopback."""
        self._rpc("swarm/connect", arg=other.swarm_multiaddr)

    def peers(self) -> dict[str, str]:
        """`ipfs swarm peers`: peer ID → the multiaddr of the connection to it."""
        answer = self._rpc("swarm/peers")
        return {str(peer["Peer"]): str(peer["Addr"]) for peer in answer.get("Peers") or []}

    def wait_for_peers(self, expected: set[str], timeout: float = 30.0) -> dict[str, str]:
        """`peers()` once its peer IDs are exactly `expected`; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            peers = self.peers()
            if set(peers) == expected or time.monotonic() > deadline:
                assert set(peers) == expected, f"{self.peer_id} is connected to {peers}, not {expected}"
                return peers
            time.sleep(0.05)  # poll interval; the condition is the node's own peer list


@dataclass
class ResultServerProcess:
    """`prefect-bacalhau serve` (the local result server) in a child process on 127.0.0.1, logging to `log`."""

    storage: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ResultServerProcess:
        """Start it and wait until it answers (`/` is never listed: a 404 means up)."""
        cmd = [sys.executable, "-m", "prefect_bacalhau_publish.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--storage-dir", str(self.storage)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        probe = httpx.Request("GET", f"{self.base_url}/")
        wait_ready("prefect-bacalhau serve", self.proc, self.log, probe, ready=404)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Terminate (then kill) and wait."""
        if self.proc is not None:
            _stop(self.proc)

    def access_lines(self) -> list[dict[str, Any]]:
        """The JSON access-log lines written so far."""
        text = self.log.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def wait_for_lines(
        self, keep: Callable[[dict[str, Any]], bool], count: int, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """The access-log lines `keep` selects, once there are `count` of them (a line is written just
        after its response ends, so it may trail the client by a moment); AssertionError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.access_lines() if keep(line)]
            if len(lines) >= count or time.monotonic() > deadline:
                assert len(lines) == count, self.access_lines()
                return lines
            time.sleep(0.05)  # poll interval; the condition is the log file's content

    def __enter__(self) -> ResultServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_minio(base: Path | None = None) -> Iterator[MinioServer]:
    """Start a MinIO server in a temp folder for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="pbp-minio-", dir=base) as tmp:
        server = MinioServer(Path(tmp) / "data").start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def running_kubo(base: Path | None = None) -> Iterator[KuboServer]:
    """Start a Kubo daemon in a temp folder for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="pbp-kubo-", dir=base) as tmp:
        server = KuboServer(Path(tmp) / "repo").start()
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)
