"""What a user sees of a job in Prefect (issue #23): its output lines in the run's logs, bounded; task run names
that say what runs; artifacts keyed by flow and job that gain a version per run. Read back from a real server."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from prefect_bacalhau_publish import JobResult, S3Storage, get_result, run_job
from prefect_bacalhau_publish.artifacts import load_artifact_result

pytestmark = pytest.mark.usefixtures("prefect_server")


def messages(flow_run_id: Any) -> list[str]:
    async def read() -> list[Any]:
        found: list[Any] = []
        async with get_client() as client:
            while page := await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                offset=len(found),
            ):
                found += page
        return found

    APILogHandler().flush()  # the run's last records may still be queued for the API: send them first
    # a record holds the lines a job printed at once, one per line
    return [line for log in asyncio.run(read()) for line in log.message.split("\n")]


def task_runs(flow_run_id: Any) -> list[Any]:
    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return asyncio.run(read())


def task_run_names(flow_run_id: Any) -> list[str]:
    return sorted(run.name for run in task_runs(flow_run_id))


def test_a_jobs_output_lines_reach_the_runs_logs() -> None:
    @flow
    def say() -> JobResult:
        return run_job("echo hello-from-job; echo oops-on-stderr >&2; seq 1 3", publisher=None)

    job = say()
    logs = messages(job.flow_run_id)
    for line in ("[echo stdout] hello-from-job", "[echo stderr] oops-on-stderr", "[echo stdout] 3"):
        assert line in logs
    assert job.stdout_tail == "hello-from-job\n1\n2\n3\n" and job.stderr_tail == "oops-on-stderr\n"
    assert task_run_names(job.flow_run_id) == ["run_job[echo] → no publisher"]


def test_output_in_logs_is_bounded_and_binary_is_harmless(
    s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    binary = bytes(b for b in range(256) if b != 10) * 4  # one line of every other byte

    def chatty(folder: Path) -> None:
        import sys

        for number in range(1, 101):
            print(number)
        print("x" * 10_000)
        sys.stdout.flush()
        sys.stdout.buffer.write(binary + b"\n")

    @flow
    def bounded() -> list[JobResult]:
        return [
            run_job(chatty, publisher=f"s3://{bucket}/chatty", s3=s3_storage, log_output=5),
            run_job("seq 1 5", publisher=None, log_output=False, name="quiet"),
            run_job(chatty, publisher=None, name="cut"),
        ]

    capped, quiet, cut = bounded()
    assert cut.exit_code == 0
    logs = messages(capped.flow_run_id)
    shown = [m for m in logs if m.startswith("[chatty stdout]")]
    assert shown == [f"[chatty stdout] {n}" for n in range(1, 6)]
    assert (
        "[chatty] 97 more output line(s) not logged (limit 5); the result's stdout/stderr hold them all"
        in logs
    )
    assert not [m for m in logs if m.startswith("[quiet")]
    long = next(m for m in logs if m.startswith("[cut stdout] xxx"))
    assert (
        long
        == "[cut stdout] " + "x" * 4096 + " … [cut at 4096 bytes; the result's stdout has the whole line]"
    )
    garbled = next(m for m in logs if m.startswith("[cut stdout] \x01"))  # (the server drops the NUL)
    assert "\ufffd" in garbled  # shown with replacement characters
    assert capped.exit_code == 0 and capped.published is not None
    dest = get_result.fn(capped.published, tmp_path / "r", s3=s3_storage)
    stdout = (dest / "stdout").read_bytes()  # byte-exact, whatever was logged
    expected = "".join(f"{n}\n" for n in range(1, 101)).encode() + b"x" * 10_000 + b"\n" + binary + b"\n"
    assert hashlib.sha256(stdout).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert quiet.stdout_tail == "1\n2\n3\n4\n5\n"


def test_artifacts_keep_one_key_per_job_across_runs(
    s3_storage: S3Storage, bucket: str, tmp_path: Path
) -> None:
    @flow(name="nightly-sums")
    def nightly(run: int) -> JobResult:
        return run_job(
            f"echo run {run} > outputs/run.txt",
            name="sum",
            publisher=f"s3://{bucket}/sums/{{jobID}}",
            s3=s3_storage,
        )

    first, second = nightly(1), nightly(2)
    assert first.artifact_key == second.artifact_key == "bacalhau-nightly-sums-sum"

    async def versions() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["bacalhau-nightly-sums-sum"]))
            )

    assert len(asyncio.run(versions())) == 2  # one card, two versions
    assert load_artifact_result("bacalhau-nightly-sums-sum") == second.published
    dest = get_result.fn("bacalhau-nightly-sums-sum", tmp_path / "latest", s3=s3_storage)
    assert (dest / "outputs" / "run.txt").read_text() == "run 2\n"
    names = task_run_names(second.flow_run_id)
    assert names == [f"run_job[sum] → s3://{bucket}/sums/{{jobID}}"]
    logs = messages(second.flow_run_id)
    assert any(
        m.startswith(f"job sum: {second.context.job_id}, execution ") for m in logs
    )  # name first, IDs after
    assert f"job sum: {second.context.job_id} exited with 0" in logs
