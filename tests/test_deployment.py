"""The deployment path end to end, as a user runs it: a REAL Prefect server, `blocks/setup.py`, a process work
pool, `prefect deploy` of `flows/prefect.yaml` from a fresh copy of the project, a run, a worker.

The server, the deployment and the finished run are shared by this module and `tests/test_ui.py` through
`shared_chain_run` (one server per test process; each user holds a reference and the last one stops it).
Nothing here is skipped: a missing binary or a server that does not start fails the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_bacalhau_publish.testing import MinioServer, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PREFECT = Path(sys.executable).with_name("prefect")
POOL = "bacalhau-process"
DEPLOYMENT = "bacalhau-chain/nightly"
FANOUT_DEPLOYMENT = "bacalhau-fanout/on-demand"
CRON = "0 2 * * *"
SERVER_STARTUP_TIMEOUT = 240.0
RUN_TIMEOUT = 420.0
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, with its children (uvicorn, flow-run processes)."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # orphans left in its group, if any
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@dataclass
class RealPrefectServer:
    """`prefect server start` on a free 127.0.0.1 port, SQLite and PREFECT_HOME in `home`."""

    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The UI's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The REST API's base URL (what PREFECT_API_URL is set to)."""
        return f"{self.url}/api"

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.home / "server.log"

    def client_env(self, home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a CLI process (setup, deploy, worker, flow runs) talking to this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "MINIO_"))}
        env.update(
            {
                "PREFECT_HOME": str(home),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
                "AWS_EC2_METADATA_DISABLED": "true",
                "NO_PROXY": "127.0.0.1,localhost",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra or {})
        return env

    def start(self) -> RealPrefectServer:
        """Start the server and poll `/api/health` until it answers (or the process dies: then raise)."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            {
                "PREFECT_HOME": str(self.home),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
                "PREFECT_UI_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                "PYTHONUNBUFFERED": "1",
            }
        )
        cmd = [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.home, start_new_session=True
            )
        deadline = time.monotonic() + SERVER_STARTUP_TIMEOUT
        with httpx.Client(timeout=3.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"prefect server exited with {self.proc.returncode}:\n{_log_tail(self.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return self
                time.sleep(0.25)  # poll interval; readiness is the health answer
        self.stop()
        raise RuntimeError(
            f"prefect server not healthy after {SERVER_STARTUP_TIMEOUT:.0f}s:\n{_log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """Stop the server and its children."""
        if self.proc is not None:
            _stop_group(self.proc)

    def api(self, method: str, path: str, json: Any = None) -> Any:
        """One REST call; raises on an HTTP error; returns the decoded JSON (None for an empty body)."""
        with httpx.Client(timeout=30.0, trust_env=False) as client:
            response = client.request(method, f"{self.api_url}{path}", json=json)
        response.raise_for_status()
        return response.json() if response.content else None


@dataclass
class ChainRun:
    """A deployed, triggered and worker-executed run of the chain flow, with everything a test checks."""

    server: RealPrefectServer
    minio: MinioServer
    clone: Path
    client_home: Path
    bucket: str
    flow_run_id: str
    setup_output: str
    deploy_output: str
    worker_outputs: list[str]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for one more CLI process against the server."""
        return self.server.client_env(self.client_home, extra)

    def flow_run(self) -> dict[str, Any]:
        """The flow run as the API returns it."""
        run: dict[str, Any] = self.server.api("GET", f"/flow_runs/{self.flow_run_id}")
        return run

    def artifacts(self) -> list[dict[str, Any]]:
        """Every artifact the flow run created."""
        body = {"artifacts": {"flow_run_id": {"any_": [self.flow_run_id]}}, "sort": "KEY_ASC"}
        artifacts: list[dict[str, Any]] = self.server.api("POST", "/artifacts/filter", body)
        return artifacts

    def logs(self) -> str:
        """The flow run's log lines, for failure messages."""
        body = {"logs": {"flow_run_id": {"any_": [self.flow_run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
        return "\n".join(
            f"{x['level']:>2} {x['message']}" for x in self.server.api("POST", "/logs/filter", body)
        )

    def diagnostics(self) -> str:
        """Everything worth reading when a check fails."""
        return (
            f"--- worker output ---\n{''.join(self.worker_outputs)[-6000:]}\n"
            f"--- flow run logs ---\n{self.logs()[-6000:]}\n"
            f"--- server log ---\n{_log_tail(self.server.log_path, 30)}"
        )


def run_cli(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float = 300.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command; with `check`, fail with its output when it exits non-zero."""
    done = subprocess.run(
        list(args), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {done.returncode}\n--- stdout ---\n{done.stdout[-5000:]}"
            f"\n--- stderr ---\n{done.stderr[-5000:]}"
        )
    return done


def make_clone(dest: Path) -> Path:
    """A fresh copy of the project at another path, as a new clone would be (what deploy/flows need)."""
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("flows", "blocks"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest.resolve()


def minio_env(minio: MinioServer) -> dict[str, str]:
    """What a user of a MinIO server sets for `blocks/setup.py`."""
    return {
        "MINIO_ROOT_USER": minio.user,
        "MINIO_ROOT_PASSWORD": minio.password,
        "AWS_ENDPOINT_URL_S3": minio.endpoint,
        "AWS_REGION": "us-east-1",
    }


def _run_worker_until_final(run: ChainRun, worker_cwd: Path) -> dict[str, Any]:
    """`prefect worker start --run-once` until the flow run reaches a final state; returns the run."""
    deadline = time.monotonic() + RUN_TIMEOUT
    state: dict[str, Any] = run.flow_run()
    while state["state_type"] not in FINAL_STATES:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"flow run still {state['state_type']} after {RUN_TIMEOUT:.0f}s\n{run.diagnostics()}"
            )
        cmd = [str(PREFECT), "worker", "start", "--pool", POOL, "--type", "process", "--run-once"]
        proc = subprocess.Popen(
            cmd,
            env=run.env(),
            cwd=worker_cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=max(30.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            out, _ = proc.communicate()
            run.worker_outputs.append(out)
            raise AssertionError(f"worker did not finish in time\n{run.diagnostics()}") from None
        finally:
            _stop_group(proc)  # any flow-run process it left behind
        run.worker_outputs.append(out)
        state = run.flow_run()
    return state


def _count_block_documents(server: RealPrefectServer) -> dict[str, int]:
    """Block documents by block type slug, named and anonymous alike."""
    docs = server.api("POST", "/block_documents/filter", {"block_documents": {"is_anonymous": None}})
    counts: dict[str, int] = {}
    for doc in docs:
        slug = doc["block_type"]["slug"]
        counts[slug] = counts.get(slug, 0) + 1
    return counts


@dataclass
class Deployed:
    """A real Prefect server with this repository's blocks saved and every deployment of its prefect.yaml."""

    server: RealPrefectServer
    clone: Path
    client_home: Path
    bucket: str
    env: dict[str, str]
    setup: subprocess.CompletedProcess[str]
    deploy: subprocess.CompletedProcess[str]


def deploy_all(stack: contextlib.ExitStack, base: Path, minio: MinioServer, bucket_prefix: str) -> Deployed:
    """Start a server (stopped by `stack`), then from a fresh clone: `blocks/setup.py`, the process work
    pool, and `prefect deploy --all`; a new bucket named `bucket_prefix-...` is made for the run."""
    server = RealPrefectServer(base / "server-home").start()
    stack.callback(server.stop)
    clone = make_clone(base / f"fresh-clone-{uuid.uuid4().hex[:6]}")
    client_home = base / "client-home"
    client_home.mkdir()
    bucket = f"{bucket_prefix}-{uuid.uuid4().hex[:12]}"
    minio.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    env = server.client_env(client_home)
    setup = run_cli([sys.executable, "blocks/setup.py"], env={**env, **minio_env(minio)}, cwd=clone)
    run_cli([str(PREFECT), "work-pool", "create", POOL, "--type", "process"], env=env, cwd=clone)
    deploy = run_cli(
        [str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file", "flows/prefect.yaml"],
        env=env,
        cwd=clone,
    )
    return Deployed(server, clone, client_home, bucket, env, setup, deploy)


def _deploy_and_run(
    stack: contextlib.ExitStack, factory: pytest.TempPathFactory, minio: MinioServer
) -> ChainRun:
    base = factory.mktemp("deployment")
    deployed = deploy_all(stack, base, minio, "deploy")
    triggered = run_cli(
        [str(PREFECT), "deployment", "run", DEPLOYMENT, "--param", f"bucket={deployed.bucket}"],
        env=deployed.env,
        cwd=deployed.clone,
    )
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout)
    assert match, f"no flow run id in the output of `prefect deployment run`:\n{triggered.stdout}"
    run = ChainRun(
        server=deployed.server,
        minio=minio,
        clone=deployed.clone,
        client_home=deployed.client_home,
        bucket=deployed.bucket,
        flow_run_id=match.group(1),
        setup_output=deployed.setup.stdout + deployed.setup.stderr,
        deploy_output=deployed.deploy.stdout + deployed.deploy.stderr,
        worker_outputs=[],
    )
    worker_cwd = base / "worker-cwd"  # anywhere but the clone: the pull step must find the code
    worker_cwd.mkdir()
    _run_worker_until_final(run, worker_cwd)
    return run


_shared: dict[str, Any] = {"users": 0, "run": None, "stack": None, "error": None}


@contextlib.contextmanager
def shared_chain_run(factory: pytest.TempPathFactory, minio: MinioServer) -> Iterator[ChainRun]:
    """The one deployed-and-run chain of this test process; the server stops when its last user is done."""
    earlier: BaseException | None = _shared["error"]
    if earlier is not None:
        raise RuntimeError("the deployment run failed to set up earlier in this session") from earlier
    if _shared["run"] is None:
        stack = contextlib.ExitStack()
        try:
            _shared["run"] = _deploy_and_run(stack, factory, minio)
        except BaseException as exc:
            _shared["error"] = exc
            stack.close()
            raise
        _shared["stack"] = stack
    _shared["users"] += 1
    try:
        yield _shared["run"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            stack = _shared["stack"]
            _shared.update(run=None, stack=None)
            stack.close()


@pytest.fixture(scope="session")
def chain_run(tmp_path_factory: pytest.TempPathFactory, minio: MinioServer) -> Iterator[ChainRun]:
    """The chain flow deployed from `flows/prefect.yaml` on a real server and run by a process worker."""
    with shared_chain_run(tmp_path_factory, minio) as run:
        yield run


def test_setup_saved_the_blocks_without_printing_secrets(chain_run: ChainRun) -> None:
    output = chain_run.setup_output
    assert chain_run.minio.password not in output
    assert "saved MinIOCredentials block 'bacalhau-s3-credentials'" in output
    assert "saved S3Storage block 'bacalhau-s3'" in output
    assert "saved IPFSNode block 'bacalhau-ipfs'" in output
    assert "saved LocalResultServer block 'bacalhau-local'" in output
    s3 = chain_run.server.api("GET", "/block_types/slug/bacalhau-s3-storage/block_documents/name/bacalhau-s3")
    assert s3["data"]["endpoint_url"] == chain_run.minio.endpoint
    assert s3["data"]["region_name"] == "us-east-1"
    # the credentials are their own block document, referenced (not copied) by the S3 block
    reference = s3["block_document_references"]["credentials"]["block_document"]
    assert reference["block_type"]["slug"] == "minio-credentials"
    assert reference["name"] == "bacalhau-s3-credentials"
    assert reference["is_anonymous"] is False


def test_setup_rerun_updates_and_never_duplicates(chain_run: ChainRun) -> None:
    before = _count_block_documents(chain_run.server)
    ids_before = {
        doc["name"]: doc["id"]
        for doc in chain_run.server.api("POST", "/block_documents/filter", {})
        if doc["name"].startswith("bacalhau-")
    }
    extra = {**minio_env(chain_run.minio), "BACALHAU_LOCAL_PORT": "6123"}
    again = run_cli([sys.executable, "blocks/setup.py"], env=chain_run.env(extra), cwd=chain_run.clone)
    assert chain_run.minio.password not in again.stdout + again.stderr
    after = _count_block_documents(chain_run.server)
    assert after == before, (before, after)
    assert before["bacalhau-s3-storage"] == 1 and before["minio-credentials"] == 1
    assert before["bacalhau-ipfs-node"] == 1 and before["bacalhau-local-result-server"] == 1
    ids_after = {
        doc["name"]: doc["id"]
        for doc in chain_run.server.api("POST", "/block_documents/filter", {})
        if doc["name"].startswith("bacalhau-")
    }
    assert ids_after == ids_before  # updated in place
    local = chain_run.server.api(
        "GET", "/block_types/slug/bacalhau-local-result-server/block_documents/name/bacalhau-local"
    )
    assert local["data"]["port"] == 6123


def test_deployments_carry_the_cron_schedule_pool_and_pull_step(chain_run: ChainRun) -> None:
    for name in (DEPLOYMENT, FANOUT_DEPLOYMENT):
        assert f"Deployment '{name}' successfully created" in chain_run.deploy_output, chain_run.deploy_output
    deployment = chain_run.server.api("GET", f"/deployments/name/{DEPLOYMENT}")
    assert deployment["entrypoint"] == "flows/chain.py:chain"
    assert deployment["work_pool_name"] == POOL
    assert deployment["parameters"]["s3_block"] == "bacalhau-s3"
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["cron"] == CRON and schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"] is True
    # prefect.yaml's relative paths resolve from where `prefect deploy` ran (the clone's root), which the
    # build step records as the absolute directory the worker's flow-run process starts in
    [pull] = deployment["pull_steps"]
    assert pull == {"prefect.deployments.steps.set_working_directory": {"directory": str(chain_run.clone)}}
    fanout = chain_run.server.api("GET", f"/deployments/name/{FANOUT_DEPLOYMENT}")
    assert fanout["entrypoint"] == "flows/fanout.py:fanout" and fanout["schedules"] == []
    # the server's scheduler turned the cron schedule into runs at 02:00 UTC
    body = {
        "flow_runs": {
            "deployment_id": {"any_": [deployment["id"]]},
            "state": {"type": {"any_": ["SCHEDULED"]}},
        }
    }
    scheduled = chain_run.server.api("POST", "/flow_runs/filter", body)
    for flow_run in scheduled:
        assert flow_run["id"] == chain_run.flow_run_id or re.search(
            r"T02:00:00", flow_run["expected_start_time"]
        )


def test_paths_in_prefect_yaml_resolve_from_the_deploy_directory(chain_run: ChainRun) -> None:
    # run from flows/ itself, the entrypoint `flows/chain.py` does not exist: deploy fails, naming it
    done = run_cli(
        [str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.yaml"],
        env=chain_run.env(),
        cwd=chain_run.clone / "flows",
        check=False,
    )
    assert done.returncode != 0
    assert "flows/chain.py" in done.stdout + done.stderr


def test_deployment_run_completes_and_records_artifacts(chain_run: ChainRun) -> None:
    flow_run = chain_run.flow_run()
    assert flow_run["state_type"] == "COMPLETED", chain_run.diagnostics()
    assert flow_run["parameters"]["bucket"] == chain_run.bucket
    artifacts = chain_run.artifacts()
    tables = [a for a in artifacts if a["type"] == "table"]
    links = [a for a in artifacts if a["type"] == "markdown" and a["key"].endswith("-link")]
    assert len(tables) == 2 and len(links) == 2, [(a["key"], a["type"]) for a in artifacts]
    from prefect_bacalhau_publish.artifacts import spec_from_description

    client: Any = chain_run.minio.client()
    for table in tables:
        assert table["key"] in {"bacalhau-chain-job-a", "bacalhau-chain-job-b"}
        spec = spec_from_description(table["description"])
        params = spec.to_bacalhau()["Params"]
        data = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
        rows = {row["Field"]: row["Value"] for row in data}
        assert rows["Type"] == "s3"
        assert rows["Bucket"] == chain_run.bucket and rows["Key"] == params["Key"]
        assert rows["ChecksumSHA256"] == params["ChecksumSHA256"]
        head = client.head_object(Bucket=chain_run.bucket, Key=params["Key"], ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == params["ChecksumSHA256"]
        [link] = [x for x in links if x["key"] == f"{table['key']}-link"]
        assert f"/{chain_run.bucket}/{params['Key']}" in link["data"]
        assert re.search(r"[?&](X-Amz-Signature|Signature)=", link["data"]), link["data"]  # presigned
