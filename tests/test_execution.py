"""Jobs run isolated and concurrently (threads, Dask, async), callables in their own process (issue #15 §1, §2)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from prefect_bacalhau_publish import (
    JobResult,
    S3Storage,
    afetch_inputs,
    aget_result,
    apublish_result,
    arun_job,
    get_result,
    run_job,
)
from prefect_bacalhau_publish.errors import JobError
from tests.test_watching import messages, task_runs

pytestmark = pytest.mark.usefixtures("prefect_server")


def callable_job(index: int) -> Any:
    """A job that prints two lines and writes one output with a relative path, as a Bacalhau job would."""

    def work(folder: Path) -> None:
        print(f"callable {index} line 1")
        print(f"callable {index} to stderr", file=sys.stderr)
        Path("outputs", f"c{index}.txt").write_text(f"{index}\n")
        print(f"callable {index} line 2 in {Path.cwd() == folder}")

    work.__name__ = f"work{index}"
    return work


def command_job(index: int) -> str:
    return f"echo command {index} line 1; echo c{index} > outputs/k{index}.txt; echo command {index} line 2"


def check_published(results: list[JobResult], storage: S3Storage, tmp_path: Path) -> None:
    """Checked from each published result: its own lines, its own files, nothing else."""
    assert len(results) == 16
    for number, result in enumerate(results):
        index, is_callable = number % 8, number < 8
        assert result.exit_code == 0, result.stderr_tail
        assert result.published is not None
        dest = get_result.fn(result.published, tmp_path / f"r{number}", s3=storage)
        outputs = sorted(p.name for p in (dest / "outputs").iterdir())
        if is_callable:
            assert (dest / "stdout").read_text() == (
                f"callable {index} line 1\ncallable {index} line 2 in True\n"
            )
            assert (dest / "stderr").read_text() == f"callable {index} to stderr\n"
            assert outputs == [f"c{index}.txt"]
            assert result.name == f"work{index}"
        else:
            assert (dest / "stdout").read_text() == f"command {index} line 1\ncommand {index} line 2\n"
            assert outputs == [f"k{index}.txt"]
        assert result.stdout_tail == (dest / "stdout").read_text()


def run_sixteen(runner: Any, storage: S3Storage, bucket: str) -> list[JobResult]:
    publisher = f"s3://{bucket}/iso/{{executionID}}"

    @flow(task_runner=runner)
    def sixteen() -> list[JobResult]:
        callables = [run_job.submit(callable_job(i), publisher=publisher, s3=storage) for i in range(8)]
        commands = run_job.map([command_job(i) for i in range(8)], publisher=publisher, s3=unmapped(storage))
        return [future.result() for future in [*callables, *commands]]

    return sixteen()


def test_sixteen_jobs_on_eight_threads_keep_to_themselves(
    s3_storage: S3Storage, bucket: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cwd, stdout, stderr = os.getcwd(), sys.stdout, sys.stderr
    results = run_sixteen(ThreadPoolTaskRunner(max_workers=8), s3_storage, bucket)
    assert (os.getcwd(), sys.stdout, sys.stderr) == (cwd, stdout, stderr)
    print("the flow process's own line")
    captured = capfd.readouterr()
    assert captured.out.endswith("the flow process's own line\n")
    assert "callable 3 line 1" not in captured.out and "command 3 line 1" not in captured.out
    check_published(results, s3_storage, tmp_path)


@pytest.mark.slow
def test_sixteen_jobs_on_dask_keep_to_themselves(s3_storage: S3Storage, bucket: str, tmp_path: Path) -> None:
    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "processes": True,
            "threads_per_worker": 4,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
    )
    cwd = os.getcwd()
    results = run_sixteen(runner, s3_storage, bucket)
    assert os.getcwd() == cwd
    check_published(results, s3_storage, tmp_path)
    # every job's run, and the output lines it logged from its reader threads, reached this Prefect server
    runs = task_runs(results[0].flow_run_id)
    assert len(runs) == 16 and all(run.state.is_completed() for run in runs)
    assert "[work5 stdout] callable 5 line 1" in messages(results[0].flow_run_id)


def test_callable_env_timeout_exit_codes_and_errors() -> None:
    def reads_env(folder: Path) -> int:
        print(os.environ["GREETING"], os.environ["BACALHAU_JOB_ID"].startswith("j-"))
        return 7

    def sleeps(folder: Path) -> None:
        import time

        print("started", flush=True)
        time.sleep(60)

    def raises(folder: Path) -> None:
        raise RuntimeError("the job's own failure")

    def exits(folder: Path) -> None:
        sys.exit(3)

    @flow
    def jobs() -> list[JobResult]:
        return [
            run_job(reads_env, publisher=None, env={"GREETING": "hello"}),
            run_job(sleeps, publisher=None, timeout=2),
            run_job("echo started; sleep 60", publisher=None, timeout=2),
            run_job(raises, publisher=None),
            run_job(exits, publisher=None),
            run_job(lambda folder: print("a lambda"), publisher=None),
        ]

    env, slow, slow_command, failing, exiting, anonymous = jobs()
    assert (env.exit_code, env.stdout_tail) == (7, "hello True\n")
    assert (slow.exit_code, slow.stdout_tail) == (124, "started\n")
    assert "job timed out after 2s" in slow.stderr_tail
    assert (slow_command.exit_code, slow_command.stdout_tail) == (124, "started\n")
    assert failing.exit_code == 1 and "RuntimeError: the job's own failure" in failing.stderr_tail
    assert exiting.exit_code == 3
    assert (anonymous.exit_code, anonymous.stdout_tail, anonymous.name) == (0, "a lambda\n", "lambda")


def test_a_callable_that_cannot_be_pickled_is_refused_before_it_runs() -> None:
    lock = threading.Lock()

    def holds_a_lock(folder: Path) -> None:
        with lock:
            print("never")

    with pytest.raises(JobError, match="cannot be sent to its own process"):
        run_job.fn(holds_a_lock, publisher=None)


def test_async_jobs_overlap_and_the_twins_work(s3_storage: S3Storage, bucket: str, tmp_path: Path) -> None:
    def timed(index: int) -> Any:
        def work(folder: Path) -> None:
            import time

            start = time.time()
            time.sleep(2)
            print(f"{index} {start} {time.time()}")

        return work

    @flow
    async def overlapping() -> tuple[list[JobResult], Any]:
        jobs = await asyncio.gather(*[arun_job(timed(i), publisher=None) for i in range(3)])
        dispatched = run_job("echo via the sync name", publisher=f"s3://{bucket}/a/{{jobID}}", s3=s3_storage)
        assert asyncio.iscoroutine(dispatched)
        renamed = run_job.with_options(retries=0)("echo renamed", publisher=None)
        assert asyncio.iscoroutine(renamed) and (await renamed).stdout_tail == "renamed\n"
        forced = run_job("echo forced", publisher=None, _sync=True)  # type: ignore[call-arg]
        assert isinstance(forced, JobResult) and forced.stdout_tail == "forced\n"
        return [*jobs, await dispatched], None

    jobs, _ = asyncio.run(overlapping())
    spans = [tuple(float(x) for x in job.stdout_tail.split()[1:]) for job in jobs[:3]]
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # all three ran at once
    last = jobs[3]
    assert last.stdout_tail == "via the sync name\n" and last.published is not None
    # the async twins log the job's output and name their runs as the sync tasks do
    assert "[echo stdout] via the sync name" in messages(last.flow_run_id)
    names = {run.name for run in task_runs(last.flow_run_id)}
    assert f"run_job[echo] → s3://{bucket}/a/{{jobID}}" in names and "run_job[work] → no publisher" in names

    @flow
    async def twins() -> Path:
        await aget_result(last.published, tmp_path / "got", s3=s3_storage)
        source = last.published.to_input_source("/inputs/prev")  # type: ignore[union-attr]
        await afetch_inputs([source], tmp_path / "fetched", s3=s3_storage)
        result_dir = tmp_path / "fetched" / "inputs" / "prev"
        again = await apublish_result(result_dir, f"s3://{bucket}/again", s3=s3_storage)
        return await aget_result(again, tmp_path / "again", s3=s3_storage)

    again = asyncio.run(twins())
    assert (again / "stdout").read_text() == "via the sync name\n"
    assert (tmp_path / "got" / "stdout").read_text() == "via the sync name\n"
