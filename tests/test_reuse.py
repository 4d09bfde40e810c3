"""`run_job(..., reuse=True)`: jobs whose command, env, publisher spec and inputs' content are unchanged, and
whose earlier published result still verifies, are not run again (Prefect's cache; reuse.py).

Every job under test appends a line to a counter file outside its working folder, so the tests count how
often its command really ran. Real MinIO, Kubo, local result server and Prefect server throughout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.settings import get_current_settings

from prefect_bacalhau_publish import REUSE, InputSource, JobResult, PublisherSpec, S3Storage, run_job
from prefect_bacalhau_publish.reuse import REUSE_WHEN_ASKED, NoIdentity, input_identity, job_key
from prefect_bacalhau_publish.specs import IPFSParams, ResultPath, S3Params, URLParams
from prefect_bacalhau_publish.testing import KuboServer

COUNTED = 'echo ran >> "$COUNTER"'
"""Appended to each counted job's command: one line in the counter file per real execution."""


def runs(counter: Path) -> int:
    """How many times the counted job's command ran."""
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def logs_of(flow_run_id: Any) -> list[str]:
    APILogHandler().flush()

    async def read() -> list[str]:
        async with get_client() as client:
            found = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            return [log.message for log in found]

    return asyncio.run(read())


def task_states(flow_run_id: Any) -> dict[str, str]:
    """Task run name → its final state's name (`Completed`, `Cached`, ...)."""

    async def read() -> dict[str, str]:
        async with get_client() as client:
            found = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            return {run.name: run.state.name for run in found if run.state is not None}

    return asyncio.run(read())


def run_flow(made: Any, **params: Any) -> tuple[Any, Any]:
    """Run a flow; its return value and its flow run id (it must complete)."""
    state = made(**params, return_state=True)
    if asyncio.iscoroutine(state):
        state = asyncio.run(state)
    assert state.is_completed(), state
    return state.result(), state.state_details.flow_run_id


# ------------------------------------------------------------------------------------- the key alone

CHECKSUM = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="


def s3_input(bucket: str, key: str, checksum: str, *, endpoint: str = "http://127.0.0.1:9000") -> InputSource:
    return InputSource.model_validate(
        {
            "Source": {
                "Type": "s3",
                "Params": {
                    "Bucket": bucket,
                    "Key": key,
                    "Endpoint": endpoint,
                    "ChecksumSHA256": checksum,
                    "Extract": True,
                },
            },
            "Target": "/inputs/a",
        }
    )


def base_call(**changes: Any) -> dict[str, Any]:
    """A run_job call's parameters whose inputs need no network to identify (checksum, CID, inline data)."""
    call: dict[str, Any] = {
        "command": "sort inputs/a/outputs/n.txt > outputs/sorted.txt",
        "publisher": "s3://results/b/{executionID},opt=endpoint=http://127.0.0.1:9000",
        "inputs": [
            s3_input("results", "a/e-1.tar.gz", CHECKSUM),
            {"Source": {"Type": "ipfs", "Params": {"CID": "bafkqaaa"}}, "Target": "/inputs/c"},
            {"Source": {"Type": "inline", "Params": {"URL": "data:,hello"}}, "Target": "/inputs/d"},
        ],
        "env": {"LANG": "C", "MODE": "fast"},
        "reuse": True,
    }
    return call | changes


def test_key_follows_content_not_location() -> None:
    key = job_key(base_call())
    assert key.startswith("bacalhau-job-") and len(key) == len("bacalhau-job-") + 64
    assert job_key(base_call()) == key
    moved = base_call()
    moved["inputs"] = [
        s3_input("elsewhere", "runs/e-2.tar.gz", CHECKSUM, endpoint="http://127.0.0.1:9999"),
        *moved["inputs"][1:],
    ]
    assert job_key(moved) == key, "the same bytes under another bucket, key and endpoint are the same input"
    changed = base_call()
    changed["inputs"] = [s3_input("results", "a/e-1.tar.gz", "x" + CHECKSUM[1:]), *changed["inputs"][1:]]
    assert job_key(changed) != key


@pytest.mark.parametrize(
    "change",
    [
        {"command": "sort -r inputs/a/outputs/n.txt > outputs/sorted.txt"},
        {"command": ["sort", "inputs/a/outputs/n.txt"]},
        {"env": {"LANG": "C", "MODE": "slow"}},
        {"env": {"LANG": "C", "MODE": "fast", "EXTRA": "1"}},
        {"env": None},
        {"publisher": "s3://results/b/{jobID},opt=endpoint=http://127.0.0.1:9000"},
        {"publisher": "s3://results/b/{executionID},opt=endpoint=http://127.0.0.1:9000,opt=encoding=plain"},
        {"publisher": "ipfs"},
        {"publisher": None},
        {"result_paths": [ResultPath.model_validate({"Name": "out", "Path": "/out"})]},
        {"partition": (1, 2)},
        {"inputs": base_call()["inputs"][:2]},
        {
            "inputs": [
                *base_call()["inputs"][:2],
                {"Source": {"Type": "inline", "Params": {"URL": "data:,bye"}}, "Target": "/inputs/d"},
            ]
        },
        {
            "inputs": [
                *base_call()["inputs"][:2],
                {"Source": {"Type": "inline", "Params": {"URL": "data:,hello"}}, "Target": "/inputs/e"},
            ]
        },
        {
            "inputs": [
                base_call()["inputs"][0],
                {"Source": {"Type": "ipfs", "Params": {"CID": "bafkqaab"}}, "Target": "/inputs/c"},
                base_call()["inputs"][2],
            ]
        },
    ],
)
def test_key_changes_with_what_decides_the_result(change: dict[str, Any]) -> None:
    assert job_key(base_call(**change)) != job_key(base_call())


def test_key_ignores_form_and_order_of_the_same_call() -> None:
    key = job_key(base_call())
    spec = PublisherSpec.model_validate(
        {
            "Type": "s3",
            "Params": {"Bucket": "results", "Key": "b/{executionID}", "Endpoint": "http://127.0.0.1:9000"},
        }
    )
    assert job_key(base_call(publisher=spec)) == key, "placeholders are hashed as written, in any spec form"
    assert job_key(base_call(publisher=spec.to_bacalhau())) == key
    assert job_key(base_call(env={"MODE": "fast", "LANG": "C"})) == key
    as_json = [
        json.loads(s.model_dump_json(by_alias=True)) if isinstance(s, InputSource) else s
        for s in base_call()["inputs"]
    ]
    assert job_key(base_call(inputs=as_json)) == key
    # what does not change the result: names, blocks, logging, the reuse flag itself
    assert job_key(base_call(name="other", log_output=False, job_id="j-x", reuse=False)) == key


def test_key_follows_the_s3_blocks_store_not_its_credentials() -> None:
    from prefect_aws import MinIOCredentials

    def block(endpoint: str, password: str) -> S3Storage:
        credentials = MinIOCredentials(minio_root_user="user", minio_root_password=password)
        return S3Storage(endpoint_url=endpoint, credentials=credentials)

    key = job_key(base_call(s3=block("http://127.0.0.1:9000", "secret-one")))
    assert job_key(base_call(s3=block("http://127.0.0.1:9000", "secret-two"))) == key
    assert job_key(base_call(s3=block("http://127.0.0.1:9100", "secret-one"))) != key, "another store"


def make_job(n: int) -> Callable[[Path], None]:
    def job(folder: Path) -> None:
        (folder / "outputs" / "n.txt").write_text(f"{n}\n")

    return job


def test_key_of_a_callable_follows_its_closure() -> None:
    assert job_key(base_call(command=make_job(2))) == job_key(base_call(command=make_job(2)))
    assert job_key(base_call(command=make_job(2))) != job_key(base_call(command=make_job(3)))


def test_key_is_the_same_in_another_process() -> None:
    here = job_key(base_call())
    code = (
        "import json, sys\n"
        "from tests.test_reuse import base_call\n"
        "from prefect_bacalhau_publish.reuse import job_key\n"
        "print(job_key(base_call()))\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == here


def test_an_input_without_content_identity_turns_reuse_off() -> None:
    local = {"Source": {"Type": "local", "Params": {"SourcePath": "/srv/data"}}, "Target": "/inputs/l"}
    call = base_call(inputs=[*base_call()["inputs"], local])
    with pytest.raises(NoIdentity, match=r"input /inputs/l \(local\) has no content identity"):
        job_key(call)
    assert REUSE.compute_key(task_ctx=cast(Any, None), inputs=call, flow_parameters={}) is None


def test_run_jobs_policy_keys_only_calls_that_ask() -> None:
    no_ctx = cast(Any, None)
    assert REUSE_WHEN_ASKED.compute_key(no_ctx, base_call(reuse=False), {}) is None
    assert REUSE_WHEN_ASKED.compute_key(no_ctx, base_call(reuse=True), {}) == job_key(base_call())
    assert REUSE.compute_key(no_ctx, base_call(reuse=False), {}) == job_key(base_call())
    assert run_job.cache_policy == REUSE_WHEN_ASKED and run_job.persist_result is True


# ------------------------------------------------------------------------------ S3 inputs' identity


def test_s3_inputs_without_checksum_are_identified_by_what_s3_reports(
    s3_client: Any, bucket: str, s3_storage: S3Storage
) -> None:
    endpoint = s3_storage.endpoint_url
    for folder in ("one", "two"):
        s3_client.put_object(Bucket=bucket, Key=f"{folder}/data.txt", Body=b"same bytes\n")
        s3_client.put_object(Bucket=bucket, Key=f"{folder}/sub/more.txt", Body=b"more\n")

    def identity(key: str) -> dict[str, Any]:
        source = InputSource.model_validate(
            {
                "Source": {"Type": "s3", "Params": {"Bucket": bucket, "Key": key, "Endpoint": endpoint}},
                "Target": "/inputs/x",
            }
        )
        return input_identity(source, s3=s3_storage)

    assert identity("one/data.txt") == identity("two/data.txt")
    assert identity("one/") == identity("two/")
    assert "listing" in identity("one/") and len(identity("one/")["listing"]) == 2
    s3_client.put_object(Bucket=bucket, Key="two/sub/more.txt", Body=b"other\n")
    assert identity("one/") != identity("two/")
    assert identity("one/data.txt") == identity("two/data.txt")
    s3_client.put_object(Bucket=bucket, Key="two/data.txt", Body=b"other bytes\n")
    assert identity("one/data.txt") != identity("two/data.txt")
    with pytest.raises(NoIdentity, match=r"input /inputs/x \(s3\) cannot be identified"):
        identity("missing.txt")


# ------------------------------------------------------------------------------- chains, under Prefect


def reuse_chain(counter: Path, a_publisher: str, b_publisher: str, **blocks: Any) -> Any:
    """A (always runs: writes the flow's `value`) → B (reuse=True: counts A's lines, and each of its own runs
    in `counter`); A publishes to `a_publisher`, B to `b_publisher`, both with `blocks`."""

    @flow
    def chain(value: str) -> tuple[JobResult, JobResult]:
        a = run_job(f"printf '{value}\\n' > outputs/n.txt", publisher=a_publisher, **blocks)
        assert a.published is not None
        b = run_job(
            f"wc -l < inputs/a/outputs/n.txt > outputs/lines.txt && {COUNTED}",
            publisher=b_publisher,
            inputs=[a.published.to_input_source("/inputs/a")],
            env={"COUNTER": str(counter)},
            name="b",
            reuse=True,
            **blocks,
        )
        return a, b

    return chain


def s3_chain(bucket: str, s3: S3Storage, counter: Path, *, encoding: str = "gzip") -> Any:
    """`reuse_chain` on S3, A and B under a new key per execution, both with `encoding`."""
    opts = ",opt=encoding=plain" if encoding == "plain" else ""
    return reuse_chain(
        counter, f"s3://{bucket}/a/{{executionID}}{opts}", f"s3://{bucket}/b/{{executionID}}{opts}", s3=s3
    )


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("encoding", ["gzip", "plain"])
def test_chain_reruns_b_only_when_a_changes(
    bucket: str, s3_storage: S3Storage, tmp_path: Path, encoding: str
) -> None:
    counter = tmp_path / "b-ran"
    chain = s3_chain(bucket, s3_storage, counter, encoding=encoding)

    (a1, b1), _ = run_flow(chain, value="1 2 3")
    assert runs(counter) == 1 and not b1.reused
    (a2, b2), second = run_flow(chain, value="1 2 3")
    a1p, a2p = cast(S3Params, a1.published.params), cast(S3Params, a2.published.params)
    assert a1p.key != a2p.key, "A ran again and wrote under a new key"
    if encoding == "gzip":
        assert a1p.checksum_sha256 == a2p.checksum_sha256, "the same bytes (deterministic archives)"
    else:  # the manifest names its prefix, so its own checksum differs; its files' checksums do not
        assert a1p.checksum_sha256 != a2p.checksum_sha256
    assert runs(counter) == 1, "B's command ran once"
    assert b2.reused and b2.published == b1.published
    assert b2.context.execution_id == b1.context.execution_id and b2.task_run_id == b1.task_run_id
    assert any(m.startswith("job b reused: execution " + b1.context.execution_id) for m in logs_of(second))
    states = task_states(second)
    assert sorted(states.values()) == ["Cached", "Completed"], states

    # the record is Prefect's, in its result storage, under the key the policy computed
    key = job_key(
        {
            "command": f"wc -l < inputs/a/outputs/n.txt > outputs/lines.txt && {COUNTED}",
            "publisher": f"s3://{bucket}/b/{{executionID}}"
            + (",opt=encoding=plain" if encoding == "plain" else ""),
            "inputs": [a2.published.to_input_source("/inputs/a")],
            "env": {"COUNTER": str(counter)},
            "s3": s3_storage,
        }
    )
    storage = Path(get_current_settings().results.local_storage_path)
    assert (storage / key).is_file(), sorted(p.name for p in storage.iterdir())

    (_, b3), _ = run_flow(chain, value="4 5 6")
    assert runs(counter) == 2 and not b3.reused, "A's output changed: B ran"
    assert b3.published != b1.published
    (_, b4), _ = run_flow(chain, value="1 2 3")
    assert runs(counter) == 2 and b4.reused and b4.published == b1.published, "back to the first content"


def one_object(result: JobResult) -> str:
    """The key of the published archive, or of one file of a plain result."""
    params = cast(S3Params, cast(Any, result.published).params)
    return params.key + "outputs/lines.txt" if params.is_prefix else params.key


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("encoding", ["gzip", "plain"])
def test_a_deleted_or_altered_result_reruns_the_job(
    bucket: str, s3_storage: S3Storage, s3_client: Any, tmp_path: Path, encoding: str
) -> None:
    counter = tmp_path / "b-ran"
    chain = s3_chain(bucket, s3_storage, counter, encoding=encoding)

    (_, b1), _ = run_flow(chain, value="7")
    (_, b2), _ = run_flow(chain, value="7")
    assert runs(counter) == 1 and b2.reused
    s3_client.delete_object(Bucket=bucket, Key=one_object(b1))

    (_, b3), third = run_flow(chain, value="7")
    assert runs(counter) == 2 and not b3.reused, "B's published object was deleted: B ran again"
    assert b3.context.execution_id != b1.context.execution_id
    assert any("no longer exists" in m and "running the job again" in m for m in logs_of(third))
    assert "Cached" not in task_states(third).values()

    (_, b4), _ = run_flow(chain, value="7")
    assert runs(counter) == 2 and b4.reused and b4.published == b3.published, "the new record is used"

    s3_client.put_object(
        Bucket=bucket, Key=one_object(b3), Body=b"not the result", ChecksumAlgorithm="SHA256"
    )
    (_, b5), fifth = run_flow(chain, value="7")
    assert runs(counter) == 3 and not b5.reused, "B's object holds other bytes: B ran again"
    altered = "now holds other bytes" if encoding == "gzip" else "was replaced after publishing"
    assert any(altered in m for m in logs_of(fifth))


@pytest.mark.usefixtures("prefect_server")
def test_without_reuse_or_after_a_failure_the_job_runs(
    bucket: str, s3_storage: S3Storage, tmp_path: Path
) -> None:
    counter = tmp_path / "ran"

    @flow
    def once(reuse: bool, code: int) -> JobResult:
        return run_job(
            f"{COUNTED}; exit {code}",
            publisher=f"s3://{bucket}/x/{{executionID}}",
            env={"COUNTER": str(counter)},
            s3=s3_storage,
            reuse=reuse,
        )

    storage = Path(get_current_settings().results.local_storage_path)
    records = sorted(storage.iterdir()) if storage.exists() else []
    for _ in range(2):
        job, _ = run_flow(once, reuse=False, code=0)
        assert not job.reused
    assert runs(counter) == 2, "reuse=False (the default) never skips a job"
    assert (sorted(storage.iterdir()) if storage.exists() else []) == records, "and stores no record"
    for _ in range(2):
        job, _ = run_flow(once, reuse=True, code=3)
        assert job.exit_code == 3 and not job.reused
    assert runs(counter) == 4, "a job that exited non-zero is not reused"
    job, _ = run_flow(once, reuse=True, code=0)
    again, _ = run_flow(once, reuse=True, code=0)
    assert runs(counter) == 5 and again.reused and again.published == job.published


@pytest.mark.usefixtures("prefect_server")
def test_async_flows_reuse_through_arun_job(bucket: str, s3_storage: S3Storage, tmp_path: Path) -> None:
    counter = tmp_path / "ran"

    @flow
    async def pipeline() -> JobResult:
        job: JobResult = await run_job(
            f"echo async > outputs/a.txt && {COUNTED}",
            publisher=f"s3://{bucket}/async/{{executionID}}",
            env={"COUNTER": str(counter)},
            s3=s3_storage,
            reuse=True,
        )
        return job

    first, _ = run_flow(pipeline)
    second, _ = run_flow(pipeline)
    assert runs(counter) == 1 and not first.reused and second.reused
    assert second.published == first.published


# ----------------------------------------------------------------------------------- IPFS and URLs


@pytest.mark.usefixtures("prefect_server")
def test_ipfs_chain_by_cid_and_an_unpinned_result(kubo: KuboServer, tmp_path: Path) -> None:
    from prefect_bacalhau_publish import IPFSNode

    node = IPFSNode(api_address=kubo.api_multiaddr)
    counter = tmp_path / "b-ran"
    token = uuid.uuid4().hex  # content no other test publishes

    chain = reuse_chain(counter, "ipfs", "ipfs", ipfs=node)
    (a1, b1), _ = run_flow(chain, value=token)
    (a2, b2), _ = run_flow(chain, value=token)
    assert a1.context.execution_id != a2.context.execution_id and a1.published == a2.published
    assert runs(counter) == 1 and b2.reused and b2.published == b1.published
    cid = cast(IPFSParams, b1.published.params).cid
    unpinned = httpx.post(f"{kubo.api_url}/api/v0/pin/rm", params={"arg": cid}, timeout=30, trust_env=False)
    assert unpinned.status_code == 200, unpinned.text
    (_, b3), third = run_flow(chain, value=token)
    assert runs(counter) == 2 and not b3.reused, "B's CID was unpinned: B ran (and pinned it again)"
    assert any(f"{cid} is no longer pinned" in m for m in logs_of(third))
    (_, b4), _ = run_flow(chain, value=token)
    assert runs(counter) == 2 and b4.reused


@pytest.mark.usefixtures("prefect_server")
def test_url_chain_by_digest_and_a_deleted_archive(tmp_path: Path) -> None:
    from prefect_bacalhau_publish import LocalResultServer
    from prefect_bacalhau_publish.server import running_server
    from prefect_bacalhau_publish.testing import free_port

    port = free_port()
    config = LocalResultServer(storage_dir=tmp_path / "store", port=port, public_address="127.0.0.1")
    counter = tmp_path / "b-ran"
    chain = reuse_chain(counter, "local", "local", local=config)
    with running_server(config, port=port):
        (a1, b1), _ = run_flow(chain, value="from-a")
        (a2, b2), _ = run_flow(chain, value="from-a")
        url1, url2 = cast(URLParams, a1.published.params).url, cast(URLParams, a2.published.params).url
        assert url1 != url2, "A's archive is served under its new execution's name"
        bodies = [httpx.get(u, trust_env=False).content for u in (url1, url2)]
        assert hashlib.sha256(bodies[0]).digest() == hashlib.sha256(bodies[1]).digest()
        assert runs(counter) == 1 and b2.reused and b2.published == b1.published
        (tmp_path / "store" / f"{b1.context.execution_id}.tar.gz").unlink()
        (_, b3), third = run_flow(chain, value="from-a")
        assert runs(counter) == 2 and not b3.reused, "B's archive is gone from the server: B ran"
        assert any("answers HTTP 404" in m for m in logs_of(third))
