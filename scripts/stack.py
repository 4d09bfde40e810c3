"""A persistent local stack for trying deployments: MinIO, Kubo, the local result server and a Prefect server.

    make stack          # or: .venv/bin/python scripts/stack.py up
    source .stack/env   # AWS_*, PREFECT_API_URL, IPFS_*, BACALHAU_LOCAL_* for the stack
    make stack-down     # or: .venv/bin/python scripts/stack.py down   (data stays in .stack/)

Every server listens on 127.0.0.1 only, on fixed ports that environment variables override:
STACK_MINIO_PORT (9000; its console on STACK_MINIO_CONSOLE_PORT, 9001), STACK_KUBO_API_PORT (5001),
STACK_KUBO_GATEWAY_PORT (8080), STACK_RESULTS_PORT (6001), STACK_PREFECT_PORT (4200). Data, logs, PIDs and
the env file live in STACK_DIR (default `.stack/` in the repository root, ignored by git). `up` is
idempotent: a server whose recorded process is alive and answers its health check is left as it is.
Kubo runs `--offline` with the `test` profile and no bootstrap peers, so it never leaves loopback.
MinIO's root password is generated once and kept in `STACK_DIR/env`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prefect_bacalhau_publish.testing import ServerStartError, binary, wait_ready  # noqa: E402

MINIO_USER = "stack-admin"
HEALTH_TIMEOUT = 180.0
"""Seconds a server may take to answer its health check (Prefect's first start migrates its database)."""


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass
class Settings:
    """Where everything goes, from the environment."""

    home: Path
    minio: int
    minio_console: int
    kubo_api: int
    kubo_gateway: int
    results: int
    prefect: int

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("STACK_DIR", REPO / ".stack")).absolute()
        return cls(
            home=home,
            minio=_port("STACK_MINIO_PORT", 9000),
            minio_console=_port("STACK_MINIO_CONSOLE_PORT", 9001),
            kubo_api=_port("STACK_KUBO_API_PORT", 5001),
            kubo_gateway=_port("STACK_KUBO_GATEWAY_PORT", 8080),
            results=_port("STACK_RESULTS_PORT", 6001),
            prefect=_port("STACK_PREFECT_PORT", 4200),
        )

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect}/api"

    def password(self) -> str:
        """MinIO's root password: made once, then read back from the secret file."""
        path = self.home / "minio-root-password"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def env_lines(self) -> dict[str, str]:
        """What `source STACK_DIR/env` exports."""
        return {
            "AWS_ACCESS_KEY_ID": MINIO_USER,
            "AWS_SECRET_ACCESS_KEY": self.password(),
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{self.minio}",
            "AWS_REGION": "us-east-1",
            "PREFECT_API_URL": self.prefect_api,
            "IPFS_API": f"/ip4/127.0.0.1/tcp/{self.kubo_api}",
            "IPFS_GATEWAY": f"http://127.0.0.1:{self.kubo_gateway}",
            "BACALHAU_LOCAL_STORAGE_DIR": str(self.home / "results"),
            "BACALHAU_LOCAL_PORT": str(self.results),
            "BACALHAU_LOCAL_ADDRESS": "127.0.0.1",
        }


@dataclass
class Service:
    """One server of the stack: how to start it and how to tell it is up."""

    name: str
    command: Callable[[Settings], list[str]]
    health: Callable[[Settings], httpx.Request]
    healthy_status: int = 200
    env: Callable[[Settings], dict[str, str]] = lambda s: {}
    prepare: Callable[[Settings], None] = lambda s: None

    def pid_file(self, settings: Settings) -> Path:
        return settings.home / "pids" / f"{self.name}.pid"

    def log_file(self, settings: Settings) -> Path:
        return settings.home / "logs" / f"{self.name}.log"

    def pid(self, settings: Settings) -> int | None:
        """The recorded process id, if that process is still alive."""
        try:
            pid = int(self.pid_file(settings).read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def healthy(self, settings: Settings) -> bool:
        with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=2.0, trust_env=False) as client:
            return client.send(self.health(settings)).status_code == self.healthy_status
        return False

    def up(self, settings: Settings) -> str:
        if self.pid(settings) is not None and self.healthy(settings):
            return "already running"
        self.down(settings)
        self.prepare(settings)
        for folder in ("pids", "logs"):
            (settings.home / folder).mkdir(parents=True, exist_ok=True)
        with open(self.log_file(settings), "ab") as log:
            proc = subprocess.Popen(
                self.command(settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env(settings)},
                cwd=settings.home,
                start_new_session=True,  # survives this script; stopped as a group by `down`
            )
        self.pid_file(settings).write_text(str(proc.pid))
        try:
            wait_ready(
                self.name,
                proc,
                self.log_file(settings),
                self.health(settings),
                self.healthy_status,
                timeout=HEALTH_TIMEOUT,
            )
        except ServerStartError as exc:
            self.down(settings)
            raise SystemExit(
                f"stack: {self.name} did not come up (see {self.log_file(settings)}): {exc}"
            ) from None
        return f"started (pid {proc.pid})"

    def down(self, settings: Settings) -> str:
        pid = self.pid(settings)
        self.pid_file(settings).unlink(missing_ok=True)
        if pid is None:
            return "not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return "stopped"
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)  # waiting for the process to exit
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return "killed"


def _kubo_prepare(settings: Settings) -> None:
    repo = settings.home / "ipfs"
    env = {**os.environ, "IPFS_PATH": str(repo)}
    ipfs = str(binary("ipfs"))
    if not (repo / "config").exists():
        subprocess.run([ipfs, "init", "--profile", "test"], env=env, check=True, capture_output=True)
    config = {
        "Addresses.API": f"/ip4/127.0.0.1/tcp/{settings.kubo_api}",
        "Addresses.Gateway": f"/ip4/127.0.0.1/tcp/{settings.kubo_gateway}",
        "Addresses.Swarm": ["/ip4/127.0.0.1/tcp/0"],
        "Bootstrap": [],
        "Routing.Type": "none",
        "Discovery.MDNS.Enabled": False,
        "AutoConf.Enabled": False,
    }
    for key, value in config.items():
        subprocess.run(
            [ipfs, "config", "--json", key, json.dumps(value)], env=env, check=True, capture_output=True
        )
    (repo / "api").unlink(missing_ok=True)


def _prefect_env(settings: Settings) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(settings.home / "prefect"),
        "PREFECT_API_URL": settings.prefect_api,
        "PREFECT_UI_API_URL": settings.prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(settings.prefect),
    }


SERVICES = [
    Service(
        "minio",
        lambda s: [
            str(binary("minio")),
            "server",
            str(s.home / "minio"),
            "--address",
            f"127.0.0.1:{s.minio}",
            "--console-address",
            f"127.0.0.1:{s.minio_console}",
            "--quiet",
        ],
        lambda s: httpx.Request("GET", f"http://127.0.0.1:{s.minio}/minio/health/live"),
        env=lambda s: {
            "MINIO_ROOT_USER": MINIO_USER,
            "MINIO_ROOT_PASSWORD": s.password(),
            "MINIO_UPDATE": "off",
            "MINIO_CALLHOME_ENABLE": "off",
        },
    ),
    Service(
        "kubo",
        lambda s: [str(binary("ipfs")), "daemon", "--offline"],
        lambda s: httpx.Request("POST", f"http://127.0.0.1:{s.kubo_api}/api/v0/version"),
        env=lambda s: {"IPFS_PATH": str(s.home / "ipfs")},
        prepare=_kubo_prepare,
    ),
    Service(
        "results",
        lambda s: [
            sys.executable,
            "-m",
            "prefect_bacalhau_publish.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.results),
            "--storage-dir",
            str(s.home / "results"),
        ],
        lambda s: httpx.Request("GET", f"http://127.0.0.1:{s.results}/"),
        healthy_status=404,  # `/` is never listed: a 404 means up
    ),
    Service(
        "prefect",
        lambda s: [
            str(Path(sys.executable).with_name("prefect")),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.prefect),
        ],
        lambda s: httpx.Request("GET", f"{s.prefect_api}/health"),
        env=_prefect_env,
    ),
]


def up(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        print(f"stack: {service.name}: {service.up(settings)}", flush=True)
    env_file = settings.home / "env"
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in settings.env_lines().items()))
    env_file.chmod(0o600)
    print(f"stack: up; `source {os.path.relpath(env_file)}` for its settings")
    print(f"stack: Prefect UI at http://127.0.0.1:{settings.prefect}")


def down(settings: Settings) -> None:
    for service in reversed(SERVICES):
        print(f"stack: {service.name}: {service.down(settings)}", flush=True)


def status(settings: Settings) -> int:
    bad = 0
    for service in SERVICES:
        pid = service.pid(settings)
        ok = pid is not None and service.healthy(settings)
        bad += not ok
        print(f"stack: {service.name}: {f'up (pid {pid})' if ok else 'down'}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "status", "purge"])
    args = parser.parse_args()
    settings = Settings.from_env()
    if args.action == "up":
        up(settings)
    elif args.action == "down":
        down(settings)
    elif args.action == "purge":
        down(settings)
        shutil.rmtree(settings.home, ignore_errors=True)
        print(f"stack: removed {settings.home}")
    else:
        return status(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
