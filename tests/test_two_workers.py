"""Two compute nodes on one machine (issue #17 §2): two Prefect process workers on one work pool, against a
REAL `prefect server start`, each with its own working folder, its own `LocalResultServer` block (its own
storage folder and port) and its own result server, as two machines would have.

Job A runs on worker 1 and publishes `local` (to node 1's result server); job B runs on worker 2 and reads
A's URL as its input (a `urlDownload` from node 1's server), publishing to node 2's. Which worker runs which
run is forced by the work queue each deployment and each worker names (`node-1`, `node-2`). Then node 1's
result server is restarted on another port over the same storage: A's spec now fails with an error naming
`readdress`, and `prefect-bacalhau readdress` makes it fetch and verify again (by the CLI, and as job B's
input on worker 2 once more).

The flow is written into the test's temporary project folder (deployed with a `prefect.yaml` there, whose
pull step makes the flow-run process start in it); the blocks are saved by `blocks/setup.py --only local`,
as a user saves them on each node.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.workers.process import ProcessWorker

from prefect_bacalhau_publish.artifacts import spec_from_description
from prefect_bacalhau_publish.readdress import readdress
from prefect_bacalhau_publish.specs import PublishedResult, URLParams, load_result
from prefect_bacalhau_publish.testing import ResultServerProcess, free_port
from tests.test_deployment import (
    FINAL_STATES,
    PREFECT,
    ROOT,
    RealPrefectServer,
    _log_tail,
    _stop_group,
    run_cli,
)

pytestmark = pytest.mark.slow

POOL = "two-nodes"
FLOW = "two-nodes-job"
CLI = str(Path(sys.executable).with_name("prefect-bacalhau"))
RUN_TIMEOUT = 180.0
WORKER_ENV = {
    "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick up a run within a second, not the default 10
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
}

FLOW_SOURCE = '''\
"""One job on whichever node's worker runs this flow: its node id and LocalResultServer block come from the
worker's environment (NODE_ID, NODE_LOCAL_BLOCK), as each compute node has its own."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow

from prefect_bacalhau_publish import LocalResultServer, run_job

JOB_A = 'seq 1 1000 > outputs/numbers.txt && echo "$BACALHAU_NODE_ID" > outputs/node.txt'
JOB_B = (
    "awk '{s += $1} END {print s}' inputs/upstream/outputs/numbers.txt > outputs/sum.txt"
    " && cp inputs/upstream/outputs/node.txt outputs/upstream-node.txt"
    ' && echo "$BACALHAU_NODE_ID" > outputs/node.txt'
)


@flow(name="two-nodes-job")
def node_job(input_url: str | None = None) -> dict[str, Any]:
    """Job A (no input) or job B (reads `input_url`, a published local result, at /inputs/upstream)."""
    local = LocalResultServer.load(os.environ["NODE_LOCAL_BLOCK"])
    inputs = [f"{input_url},dst=/inputs/upstream"] if input_url else []
    job = run_job(
        JOB_B if input_url else JOB_A,
        name="job-b" if input_url else "job-a",
        publisher="local",
        inputs=inputs,
        local=local,
        node_id=os.environ["NODE_ID"],
        fail_on_nonzero=True,
    )
    assert job.published is not None
    return {"node_id": job.context.node_id, "published": job.published.to_bacalhau()}
'''


def api(server: RealPrefectServer, method: str, path: str, body: Any = None) -> Any:
    """`server.api`, retried (as Prefect's client retries) while the server answers 503 or 429: SQLite
    busy under the two workers' and the flow runs' writes."""
    deadline = time.monotonic() + 60.0
    while True:
        try:
            return server.api(method, path, body)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in (429, 503) or time.monotonic() > deadline:
                raise
        time.sleep(0.5)  # back-off between attempts; the condition is the server's answer


def prefect_yaml(project: Path) -> str:
    """Two deployments of the flow, one per node's work queue; the pull step starts runs in `project`."""
    deployments = "".join(
        f"""
  - name: on-{node}
    entrypoint: node_flow.py:node_job
    work_pool:
      name: {POOL}
      work_queue_name: {node}
      job_variables: {{}}
"""
        for node in ("node-1", "node-2")
    )
    return (
        f"name: two-nodes\nprefect-version: {version('prefect')}\nbuild: null\npush: null\npull:\n"
        f"  - prefect.deployments.steps.set_working_directory:\n      directory: {json.dumps(str(project))}\n"
        f"deployments:{deployments}"
    )


@dataclass
class Node:
    """One compute node: its folder (worker cwd, PREFECT_HOME, storage), block, result server, worker."""

    name: str  # node-1: also its work queue
    root: Path
    server: ResultServerProcess = field(init=False)
    worker: subprocess.Popen[bytes] | None = None
    first_port: int = 0

    def __post_init__(self) -> None:
        for folder in (self.cwd, self.home, self.storage):
            folder.mkdir(parents=True, exist_ok=True)
        self.server = ResultServerProcess(self.storage, self.root / "result-server.log")
        self.first_port = self.server.port

    @property
    def cwd(self) -> Path:
        return self.root / "worker-cwd"

    @property
    def home(self) -> Path:
        return self.root / "prefect-home"

    @property
    def storage(self) -> Path:
        return self.root / "results"

    @property
    def block(self) -> str:
        return f"{self.name}-local"

    @property
    def worker_name(self) -> str:
        return self.name.replace("node", "worker")

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    def setup_env(self) -> dict[str, str]:
        """What a user sets on this node for `python blocks/setup.py --only local`."""
        return {
            "BACALHAU_LOCAL_BLOCK": self.block,
            "BACALHAU_LOCAL_STORAGE_DIR": str(self.storage),
            "BACALHAU_LOCAL_PORT": str(self.server.port),
            "BACALHAU_LOCAL_ADDRESS": "127.0.0.1",
        }


@dataclass
class TwoNodes:
    server: RealPrefectServer
    nodes: list[Node]
    client_home: Path
    project: Path
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    phases: list[tuple[str, float]] = field(default_factory=list)
    _mark: float = field(default_factory=time.monotonic)

    def phase(self, name: str) -> None:
        """Record how long the step since the last mark took (printed at the end of the set-up)."""
        now = time.monotonic()
        self.phases.append((name, now - self._mark))
        self._mark = now

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return self.server.client_env(self.client_home, extra)

    def trigger(self, node: Node, input_url: str | None = None) -> str:
        deployment = api(self.server, "GET", f"/deployments/name/{FLOW}/on-{node.name}")
        parameters = {"input_url": input_url} if input_url else {}
        run = api(
            self.server,
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            {"parameters": parameters},
        )
        return str(run["id"])

    def wait(self, run_id: str) -> dict[str, Any]:
        """Poll the flow run until it reaches a final state (the workers are running); returns it."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            run: dict[str, Any] = api(self.server, "GET", f"/flow_runs/{run_id}")
            if run["state_type"] in FINAL_STATES:
                return run
            for node in self.nodes:
                if node.worker is not None and node.worker.poll() is not None:
                    raise AssertionError(f"{node.worker_name} exited\n{self.diagnostics(run_id)}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"flow run still {run['state_type']} after {RUN_TIMEOUT:.0f}s\n{self.diagnostics(run_id)}"
                )
            time.sleep(0.3)  # poll interval; the condition is the run's state

    def logs(self, run_id: str) -> str:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
        return "\n".join(x["message"] for x in api(self.server, "POST", "/logs/filter", body))

    def published(self, run_id: str) -> PublishedResult:
        """The one result the run recorded, from its table artifact."""
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}, "type": {"any_": ["table"]}}}
        [table] = api(self.server, "POST", "/artifacts/filter", body)
        return spec_from_description(table["description"])

    def diagnostics(self, run_id: str | None = None) -> str:
        parts = [f"--- {n.worker_name} ---\n{_log_tail(n.worker_log, 40)}" for n in self.nodes]
        if run_id is not None:
            parts.append(f"--- flow run logs ---\n{self.logs(run_id)[-6000:]}")
        parts.append(f"--- server log ---\n{_log_tail(self.server.log_path, 20)}")
        return "\n".join(parts)


def _start_worker(setup: TwoNodes, node: Node) -> None:
    cmd = [str(PREFECT), "worker", "start", "--pool", POOL, "--work-queue", node.name]
    cmd += ["--name", node.worker_name, "--type", "process"]
    env = setup.server.client_env(
        node.home, {**WORKER_ENV, "NODE_ID": f"n-{node.name}", "NODE_LOCAL_BLOCK": node.block}
    )
    with open(node.worker_log, "ab") as log:
        node.worker = subprocess.Popen(
            cmd, env=env, cwd=node.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def run_together(commands: list[tuple[list[str], dict[str, str], Path]], timeout: float = 300.0) -> None:
    """Run independent commands at the same time; fail with the output of any that exits non-zero."""
    procs: list[tuple[list[str], subprocess.Popen[bytes]]] = []
    try:
        for argv, env, cwd in commands:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append((argv, proc))
        for argv, proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, (
                f"{' '.join(argv)} exited with {proc.returncode}:\n{out.decode()[-5000:]}"
            )
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def _stop_worker(node: Node) -> None:
    if node.worker is not None:
        _stop_group(node.worker)


def _wait_workers_online(setup: TwoNodes) -> None:
    """Both workers have registered with the pool (their heartbeat reached the server)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    names = {node.worker_name for node in setup.nodes}
    while True:
        workers = api(setup.server, "POST", f"/work_pools/{POOL}/workers/filter", {})
        online = {w["name"] for w in workers if w["status"] == "ONLINE"}
        if names <= online:
            return
        for node in setup.nodes:
            if node.worker is not None and node.worker.poll() is not None:
                raise AssertionError(f"{node.worker_name} exited\n{setup.diagnostics()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"workers online: {online}, expected {names}\n{setup.diagnostics()}")
        time.sleep(0.3)  # poll interval; the condition is the pool's worker list


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    base = tmp_path_factory.mktemp("two-workers")
    started = time.monotonic()
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(3) as pool:
        server = RealPrefectServer(base / "server-home")
        stack.callback(server.stop)
        nodes = [Node(name, base / name) for name in ("node-1", "node-2")]
        for node in nodes:
            stack.callback(node.server.stop)
        # the Prefect server and each node's result server start side by side
        starting = [pool.submit(server.start)] + [pool.submit(node.server.start) for node in nodes]
        for future in starting:
            future.result()
        project = (base / "project").resolve()
        project.mkdir()
        (project / "node_flow.py").write_text(FLOW_SOURCE)
        (project / "prefect.yaml").write_text(prefect_yaml(project))
        client_home = base / "client-home"
        client_home.mkdir()
        setup = TwoNodes(server, nodes, client_home, project, _mark=started)
        setup.phase("prefect server and result servers start")
        env = setup.env()
        # the pool (as `prefect work-pool create POOL --type process` makes it) and a queue per node
        template = ProcessWorker.get_default_base_job_template()
        api(server, "POST", "/work_pools/", {"name": POOL, "type": "process", "base_job_template": template})
        for node in nodes:
            api(server, "POST", f"/work_pools/{POOL}/queues", {"name": node.name})
            _start_worker(setup, node)
            stack.callback(_stop_worker, node)
        # meanwhile each node saves its own block, as a user does on each machine, and the flow is deployed
        saves = [
            ([sys.executable, str(ROOT / "blocks/setup.py"), "--only", "local"],
             server.client_env(node.home, node.setup_env()), node.cwd)
            for node in nodes
        ]  # fmt: skip
        deploy = (
            [str(PREFECT), "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.yaml"],
            env,
            project,
        )
        run_together([*saves, deploy])
        setup.phase("blocks saved, flow deployed")
        _wait_workers_online(setup)
        setup.phase("workers online")
        a_id = setup.trigger(nodes[0])
        setup.runs["a"] = setup.wait(a_id)
        assert setup.runs["a"]["state_type"] == "COMPLETED", setup.diagnostics(a_id)
        setup.phase("run A on worker 1")
        a_url = _url(setup.published(a_id))
        b_id = setup.trigger(nodes[1], input_url=a_url)
        setup.runs["b"] = setup.wait(b_id)
        setup.phase("run B on worker 2")
        print("two workers:", ", ".join(f"{name} {seconds:.1f}s" for name, seconds in setup.phases))
        yield setup


def _url(result: PublishedResult) -> str:
    assert isinstance(result.params, URLParams), result
    return result.params.url


def test_each_job_ran_on_its_own_worker(two_nodes: TwoNodes) -> None:
    node1, node2 = two_nodes.nodes
    for key, node in (("a", node1), ("b", node2)):
        run = two_nodes.runs[key]
        assert run["state_type"] == "COMPLETED", two_nodes.diagnostics(run["id"])
        # the worker that picked the run up gave it its labels; the queue is the deployment's
        assert run["labels"]["prefect.worker.name"] == node.worker_name, run["labels"]
        assert run["work_pool_name"] == POOL and run["work_queue_name"] == node.name
        assert f"on n-{node.name}" in two_nodes.logs(run["id"])  # run_job's log line names the node id
    # each worker's own log says it submitted its run, and only its run
    log1, log2 = node1.worker_log.read_text(), node2.worker_log.read_text()
    a_id, b_id = two_nodes.runs["a"]["id"], two_nodes.runs["b"]["id"]
    assert a_id in log1 and a_id not in log2
    assert b_id in log2 and b_id not in log1


def test_each_result_is_on_its_own_node(two_nodes: TwoNodes, tmp_path: Path) -> None:
    node1, node2 = two_nodes.nodes
    a = two_nodes.published(two_nodes.runs["a"]["id"])
    b = two_nodes.published(two_nodes.runs["b"]["id"])
    assert _url(a).startswith(f"{node1.server.base_url}/") and _url(a).endswith(".tar.gz")
    assert _url(b).startswith(f"{node2.server.base_url}/") and _url(b).endswith(".tar.gz")
    # each archive (and its digest sidecar) sits in its own node's storage folder only
    a_name, b_name = _url(a).rpartition("/")[2], _url(b).rpartition("/")[2]
    assert {p.name for p in node1.storage.iterdir()} == {a_name, f"{a_name}.sha256"}
    assert {p.name for p in node2.storage.iterdir()} == {b_name, f"{b_name}.sha256"}
    # B's result, fetched and verified from node 2's server, names both nodes: its own and its input's
    spec = _spec_file(tmp_path / "b.json", b)
    run_cli([CLI, "get", str(spec), "-o", str(tmp_path / "b")], env=two_nodes.env(), cwd=tmp_path)
    outputs = tmp_path / "b" / "outputs"
    assert (outputs / "node.txt").read_text() == "n-node-2\n"
    assert (outputs / "upstream-node.txt").read_text() == "n-node-1\n"
    assert (outputs / "sum.txt").read_text() == f"{sum(range(1, 1001))}\n"
    # B read A's archive over HTTP from node 1's result server, whole, in one GET
    [served] = node1.server.wait_for_lines(lambda x: x["method"] == "GET" and a_name in x["path"], 1)
    assert served["status"] == 200 and served["bytes"] == (node1.storage / a_name).stat().st_size
    assert not [x for x in node2.server.access_lines() if a_name in x["path"]]


def test_each_node_saved_its_own_block(two_nodes: TwoNodes) -> None:
    for node in two_nodes.nodes:
        block = api(
            two_nodes.server,
            "GET",
            f"/block_types/slug/bacalhau-local-result-server/block_documents/name/{node.block}",
        )
        assert block["data"]["storage_dir"] == str(node.storage)
        assert block["data"]["port"] == node.first_port
        assert block["data"]["public_address"] == "127.0.0.1"


def test_readdress_after_node_1_server_moves(two_nodes: TwoNodes, tmp_path: Path) -> None:
    """Runs last in this module: it moves node 1's result server to another port."""
    node1, node2 = two_nodes.nodes
    a = two_nodes.published(two_nodes.runs["a"]["id"])
    old_base = node1.server.base_url
    spec = _spec_file(tmp_path / "a.json", a)
    env = two_nodes.env()

    # node 1's result server restarts on another port, over the same storage folder (a new log file)
    node1.server.stop()
    node1.server.port = free_port()
    node1.server.log = node1.root / "result-server-moved.log"
    node1.server.start()
    new_base = node1.server.base_url
    assert new_base != old_base

    failed = run_cli([CLI, "get", str(spec), "-o", str(tmp_path / "old")], env=env, cwd=tmp_path, check=False)
    assert failed.returncode == 1, failed
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot connect to {_url(a)}"), line
    assert "readdress" in line, line
    assert not (tmp_path / "old" / "outputs").exists()

    done = run_cli([CLI, "readdress", old_base, new_base, str(spec)], env=env, cwd=tmp_path)
    assert f"rewrote {spec}" in done.stdout
    moved = load_result(spec)
    assert moved == readdress(a, old_base, new_base)  # the CLI and the function agree
    assert _url(moved) == new_base + _url(a).removeprefix(old_base)

    run_cli([CLI, "get", str(spec), "-o", str(tmp_path / "new")], env=env, cwd=tmp_path)
    assert (tmp_path / "new" / "outputs" / "node.txt").read_text() == "n-node-1\n"
    assert (tmp_path / "new" / "outputs" / "numbers.txt").read_text() == "".join(
        f"{n}\n" for n in range(1, 1001)
    )
    name = _url(a).rpartition("/")[2]

    def is_a(line: dict[str, Any]) -> bool:
        return bool(line["method"] == "GET" and name in line["path"])

    [served] = node1.server.wait_for_lines(is_a, 1)
    assert served["status"] == 200  # the restarted server answered it (get checked its digest)

    # and job B, on worker 2 again, runs from the readdressed URL, through the moved server
    again = two_nodes.wait(two_nodes.trigger(node2, input_url=_url(moved)))
    assert again["state_type"] == "COMPLETED", two_nodes.diagnostics(again["id"])
    assert again["labels"]["prefect.worker.name"] == node2.worker_name
    assert [x["status"] for x in node1.server.wait_for_lines(is_a, 2)] == [200, 200]
    b2 = two_nodes.published(again["id"])
    run_cli(
        [CLI, "get", str(_spec_file(tmp_path / "b2.json", b2)), "-o", str(tmp_path / "b2")],
        env=env,
        cwd=tmp_path,
    )
    assert (tmp_path / "b2" / "outputs" / "upstream-node.txt").read_text() == "n-node-1\n"
    assert (tmp_path / "b2" / "outputs" / "node.txt").read_text() == "n-node-2\n"


def _spec_file(path: Path, result: PublishedResult) -> Path:
    path.write_text(json.dumps(result.to_bacalhau()))
    return path
