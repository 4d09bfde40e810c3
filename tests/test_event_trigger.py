"""Event-driven chaining across deployments, as a user runs it: a REAL `prefect server start` (its triggers and
actions services on, as by default), `blocks/setup.py`, a process work pool, `prefect deploy` of
`flows/prefect.yaml` from a fresh copy of the project. Job A's deployment (`bacalhau-produce/handoff`) is run by
a worker; its publish emits `bacalhau.result.published`; the trigger of `bacalhau-consume/on-published` makes
the server create job B's flow run with the event's result spec as its parameter; another worker invocation
runs B, which reads A's result as its input and publishes its own. B's output proves what it read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from prefect_bacalhau_publish import PublishedResult, get_result
from prefect_bacalhau_publish.testing import MinioServer

from .test_deployment import (
    PREFECT,
    ChainRun,
    RealPrefectServer,
    _run_worker_until_final,
    deploy_all,
    run_cli,
)

pytestmark = pytest.mark.slow

PRODUCER = "bacalhau-produce/handoff"
CONSUMER = "bacalhau-consume/on-published"
EVENT = "bacalhau.result.published"
APPEAR_TIMEOUT = 180.0


def _events(server: RealPrefectServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = server.api("POST", "/events/filter", {"limit": 50, **body})["events"]
    return events


def _poll(what: str, probe: Any, diagnostics: Any, timeout: float = APPEAR_TIMEOUT) -> Any:
    """`probe()` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s\n{diagnostics()}")
        time.sleep(0.5)  # poll interval; the condition is what the server answers


def _published_spec(run: ChainRun, job: str) -> PublishedResult:
    """The result spec a run's job published, from its table artifact (SPEC §8)."""
    from prefect_bacalhau_publish.artifacts import spec_from_description

    [table] = [a for a in run.artifacts() if a["type"] == "table" and a["key"].endswith(f"-{job}")]
    return spec_from_description(table["description"])


def _completed_on_own_worker(run: ChainRun, worker_cwd: Path, job: str) -> PublishedResult:
    """Run `run` on a process worker of its own (started in `worker_cwd`) until it ends; it must complete.
    Returns the result spec its `job` published."""
    worker_cwd.mkdir()
    state = _run_worker_until_final(run, worker_cwd)
    assert state["state_type"] == "COMPLETED", run.diagnostics()
    return _published_spec(run, job)


def _sha256_listing(root: Path) -> dict[str, str]:
    """`./relative/path` → SHA-256 of every file under root, as job B's `sha256sum` lists them."""
    return {
        f"./{p.relative_to(root).as_posix()}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_publish_event_runs_the_consumer_deployment(
    tmp_path_factory: pytest.TempPathFactory, minio: MinioServer
) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    base = tmp_path_factory.mktemp("event-trigger")
    with contextlib.ExitStack() as stack:
        deployed = deploy_all(stack, base, minio, "handoff")
        server, clone, client_home, bucket, env = (
            deployed.server,
            deployed.clone,
            deployed.client_home,
            deployed.bucket,
            deployed.env,
        )
        setup, deploy = deployed.setup, deployed.deploy
        for name in (PRODUCER, CONSUMER):
            assert f"Deployment '{name}' successfully created" in deploy.stdout, deploy.stdout + deploy.stderr
        timings["deploy"] = time.monotonic() - started

        # the consumer's trigger became an automation owned by its deployment
        consumer = server.api("GET", f"/deployments/name/{CONSUMER}")
        automations = server.api("POST", "/automations/filter", {})
        owned = [a for a in automations if [x.get("deployment_id") for x in a["actions"]] == [consumer["id"]]]
        assert len(owned) == 1, json.dumps(automations, indent=1)[:4000]
        [automation] = owned
        trigger = automation["trigger"]
        assert automation["enabled"] is True and trigger["type"] == "event"
        assert trigger["expect"] == [EVENT] and trigger["posture"] == "Reactive"
        assert trigger["match"] == {
            "prefect.resource.id": "bacalhau.result.s3.*",
            "bacalhau.s3.key": "handoff/*",
        }
        [action] = automation["actions"]
        assert action["type"] == "run-deployment" and action["parameters"] == {
            "result": "{{ event.payload.result }}"
        }
        assert (
            consumer["parameters"].get("key", "").startswith("consumed/")
        )  # B's own publish matches nothing

        message = f"job A says {uuid.uuid4().hex}"
        triggered = run_cli(
            [
                str(PREFECT),
                "deployment",
                "run",
                PRODUCER,
                "--param",
                f"bucket={bucket}",
                "--param",
                f"message={message}",
            ],
            env=env,
            cwd=clone,
        )
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout)
        assert match, triggered.stdout
        a_run = ChainRun(
            server=server,
            minio=minio,
            clone=clone,
            client_home=client_home,
            bucket=bucket,
            flow_run_id=match.group(1),
            setup_output=setup.stdout + setup.stderr,
            deploy_output=deploy.stdout + deploy.stderr,
            worker_outputs=[],
        )
        a_spec = _completed_on_own_worker(a_run, base / "worker-a", "job-a")
        timings["job A"] = time.monotonic() - started
        a_params = a_spec.to_bacalhau()["Params"]
        assert a_spec.type == "s3" and a_params["Bucket"] == bucket and a_params["Key"].startswith("handoff/")

        # A's publish is an event, from the worker's flow-run process, related to A's run and deployment
        resource_id = f"bacalhau.result.s3.{bucket}/{a_params['Key']}"
        [a_event] = _poll(
            f"the {EVENT} event of job A",
            lambda: _events(
                server, {"filter": {"event": {"name": [EVENT]}, "resource": {"id": [resource_id]}}}
            ),
            a_run.diagnostics,
        )
        assert a_event["payload"]["result"] == a_spec.to_bacalhau()
        roles = {r["prefect.resource.role"]: r for r in a_event["related"]}
        assert roles["flow-run"]["prefect.resource.id"] == f"prefect.flow-run.{a_run.flow_run_id}"
        assert roles["task-run"]["prefect.resource.id"].startswith("prefect.task-run.")
        assert roles["deployment"]["prefect.resource.name"] == "handoff"
        assert minio.password not in json.dumps(a_event)

        # ... which made the server create B's flow run, with A's result spec as its parameter
        def consumer_runs() -> list[dict[str, Any]]:
            body = {"flow_runs": {"deployment_id": {"any_": [consumer["id"]]}}}
            runs: list[dict[str, Any]] = server.api("POST", "/flow_runs/filter", body)
            return runs

        [b_flow_run] = _poll(f"a flow run of {CONSUMER}", consumer_runs, a_run.diagnostics)
        timings["B appeared"] = time.monotonic() - started
        assert b_flow_run["parameters"]["result"] == a_spec.to_bacalhau()  # a dict, not its text
        executed = _poll(
            "the automation's action.executed event",
            lambda: _events(
                server,
                {
                    "filter": {
                        "event": {"name": ["prefect.automation.action.executed"]},
                        "resource": {"id": [f"prefect.automation.{automation['id']}"]},
                    }
                },
            ),
            a_run.diagnostics,
        )
        related = {
            (r["prefect.resource.role"], r["prefect.resource.id"]) for e in executed for r in e["related"]
        }
        assert ("triggering-event", f"prefect.event.{a_event['id']}") in related
        assert ("flow-run", f"prefect.flow-run.{b_flow_run['id']}") in related

        # B runs on its own worker, reads A's result and publishes its own
        b_run = ChainRun(**{**a_run.__dict__, "flow_run_id": b_flow_run["id"], "worker_outputs": []})
        b_spec = _completed_on_own_worker(b_run, base / "worker-b", "job-b")
        timings["job B"] = time.monotonic() - started
        b_params = b_spec.to_bacalhau()["Params"]
        assert (
            b_spec.type == "s3" and b_params["Bucket"] == bucket and b_params["Key"].startswith("consumed/")
        )

        s3 = minio.storage()
        a_dir = get_result.fn(a_spec, base / "a-result", s3=s3)
        b_dir = get_result.fn(b_spec, base / "b-result", s3=s3)
        assert (a_dir / "outputs" / "message.txt").read_text() == message + "\n"
        # B's outputs: A's stdout, and the SHA-256 of every file of A's result as B found it at inputs/a
        assert message in (b_dir / "outputs" / "a-stdout.txt").read_text()
        listing = {
            line.split("  ", 1)[1]: line.split("  ", 1)[0]
            for line in (b_dir / "outputs" / "a.sha256").read_text().splitlines()
        }
        assert listing == _sha256_listing(a_dir), (listing, _sha256_listing(a_dir))
        assert "./outputs/numbers.txt" in listing and "./exitCode" in listing

        # B's own publish (under consumed/) is an event too, and started no further consumer run
        b_resource = f"bacalhau.result.s3.{bucket}/{b_params['Key']}"
        _poll(
            f"the {EVENT} event of job B",
            lambda: _events(
                server, {"filter": {"event": {"name": [EVENT]}, "resource": {"id": [b_resource]}}}
            ),
            b_run.diagnostics,
        )
        assert [r["id"] for r in consumer_runs()] == [b_flow_run["id"]]
        timings["total"] = time.monotonic() - started
        print("timings (s since start):", {k: round(v, 1) for k, v in timings.items()})
