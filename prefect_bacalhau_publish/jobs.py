"""Run a job as Bacalhau runs one: inputs in, command, stdout/stderr/exitCode and outputs out, publish."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import JobError, PublishError, SpecError
from .parse import as_inputs
from .process import OutputLog, run_process
from .publishers import publish_to
from .sources import fetch_source
from .specs import ExecutionContext, InputSource, PublishedResult, PublisherSpec, ResultPath

__all__ = ["JobResult", "check_partition", "execute_job", "fetch_all", "job_name"]

DEFAULT_RESULT_PATHS = (ResultPath.model_validate({"Name": "outputs", "Path": "/outputs"}),)
JobCommand = str | Sequence[str] | Callable[[Path], Any]


class JobResult(BaseModel):
    """What a job left: its exit code, the published result (when it had a publisher), its context, and the
    last few KiB of its stdout and stderr (the result's files hold them whole). With several publishers,
    `published` is the first one's result and `all_published` every result in the publishers' order (with
    one publisher, just that result)."""

    model_config = ConfigDict(frozen=True)

    exit_code: int
    published: PublishedResult | None
    context: ExecutionContext
    all_published: tuple[PublishedResult, ...] = ()
    artifact_key: str | None = None
    name: str = "job"
    stdout_tail: str = ""
    stderr_tail: str = ""
    flow_run_id: str | None = None
    task_run_id: str | None = None
    reused: bool = False  # an earlier run's result, returned by `run_job(..., reuse=True)` (reuse.py)


def fetch_all(
    inputs: Sequence[InputSource | Mapping[str, Any] | str],
    root: Path,
    *,
    allowed_local_paths: Sequence[str] | None = None,
    partition: tuple[int, int] = (0, 1),
    **blocks: Any,
) -> dict[str, Path]:
    """Materialise every input under `root` at its Target (leading `/` dropped); returns Target → path.
    Inputs may also be Bacalhau JSON objects or `-i` strings (`as_inputs`); `partition` `(index, count)`
    gives an S3 prefix's share to each of a job's executions."""
    inputs = as_inputs(inputs)
    check_partition(partition)
    out: dict[str, Path] = {}
    targets = [source.relative_target for source in inputs]
    for index, target in enumerate(targets):
        for other in targets[index + 1 :]:
            if other == target or other.startswith(target + "/") or target.startswith(other + "/"):
                raise SpecError(
                    f"input targets overlap: /{target} and /{other}; give each input its own Target"
                )
    for source in inputs:
        dest = root / source.relative_target
        out[source.target] = fetch_source(
            source.source, dest, allowed_local_paths=allowed_local_paths, partition=partition, **blocks
        )
    return out


def check_partition(partition: tuple[int, int]) -> None:
    """Refuse an `(index, count)` Bacalhau would not run: count ≥ 1, 0 ≤ index < count."""
    index, count = partition
    if count < 1:
        raise SpecError(f"job partitions/count must be greater than 0, got {count}")
    if not 0 <= index < count:
        raise SpecError(f"partition index must be between 0 and {count - 1}, got {index}")


def job_name(command: JobCommand, name: str | None = None) -> str:
    """The name a job goes by in logs and artifact keys: `name`, the callable's name, or the command's first word."""
    if name:
        return name
    if callable(command):
        return str(getattr(command, "__name__", "job")).strip("<>") or "job"
    words = command.split() if isinstance(command, str) else list(command)
    return Path(words[0]).name if words else "job"


def pack_callable(func: Callable[[Path], Any], payload: Path) -> list[str]:
    """Write `func` (cloudpickled) and the import path it needs to `payload`; returns the command that runs it."""
    import cloudpickle  # type: ignore[import-untyped]

    data = cloudpickle.dumps(func)
    with open(payload, "wb") as handle:
        pickle.dump([entry or os.getcwd() for entry in sys.path], handle)
        handle.write(data)
    return [sys.executable, "-m", "prefect_bacalhau_publish.callrunner", str(payload)]


def _argv(command: JobCommand, payload: Path) -> str | Sequence[str]:
    if not callable(command):
        return command
    try:
        return pack_callable(command, payload)
    except Exception as exc:
        raise JobError(
            f"the job's callable cannot be sent to its own process ({type(exc).__name__}: {exc}); "
            "define it so cloudpickle can pickle it (no open files, locks or sockets in its closure)"
        ) from None


def execute_job(
    command: JobCommand,
    *,
    publisher: PublisherSpec | Sequence[PublisherSpec] | None,
    context: ExecutionContext,
    inputs: Sequence[InputSource | Mapping[str, Any] | str] = (),
    result_paths: Sequence[ResultPath] = DEFAULT_RESULT_PATHS,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    s3: Any = None,
    ipfs: Any = None,
    local: Any = None,
    restamp: bool = True,
    name: str | None = None,
    log: OutputLog | None = None,
    allowed_local_paths: Sequence[str] | None = None,
    partition: tuple[int, int] = (0, 1),
) -> JobResult:
    """Run `command` in a fresh working folder, lay out its results as Bacalhau does, and publish them.

    The working folder holds each input at its Target and an empty folder per result path (by default
    `outputs/`); a string command runs in a shell, a list without one, a callable in a child process of its
    own (cloudpickled) that gets the folder. Each runs in that folder with `env` and `timeout`; `log` shows
    their output lines as they come. The command sees `INPUTS`/`OUTPUTS` variables pointing at those folders, and the context's ids.
    With `restamp`, the context's `published_at` is set to the moment of publishing. `partition`
    `(index, count)` is this execution's place among the job's (`BACALHAU_PARTITION_INDEX`/`_COUNT`).
    A list of publishers publishes to all of them in one pass (`publishers.fanout.publish_many`, which raises
    `FanOutError` carrying the results published when any of them fails).
    """
    names = [path.name for path in result_paths]
    if len(set(names)) != len(names):
        raise PublishError("ResultPaths names must be unique")
    inputs = as_inputs(inputs)  # malformed specs fail here, before anything runs
    check_partition(partition)
    with tempfile.TemporaryDirectory(prefix="pbp-job-") as tmp:
        workdir = Path(tmp) / "work"
        results = Path(tmp) / "results"
        workdir.mkdir()
        results.mkdir()
        fetch_all(
            inputs,
            workdir,
            s3=s3,
            ipfs=ipfs,
            local=local,
            allowed_local_paths=allowed_local_paths,
            partition=partition,
        )
        for path in result_paths:
            (workdir / path.path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        job_env = {
            **os.environ,
            **(env or {}),
            "INPUTS": str(workdir / "inputs"),
            "OUTPUTS": str(workdir / result_paths[0].path.lstrip("/")) if result_paths else "",
            "BACALHAU_JOB_ID": context.job_id,
            "BACALHAU_EXECUTION_ID": context.execution_id,
            "BACALHAU_NODE_ID": context.node_id,
            "BACALHAU_JOB_TYPE": "batch",
            "BACALHAU_PARTITION_INDEX": str(partition[0]),
            "BACALHAU_PARTITION_COUNT": str(partition[1]),
        }
        argv = _argv(command, Path(tmp) / "callable.pickle")
        code, tails = run_process(
            argv,
            cwd=workdir,
            env=job_env,
            stdout=results / "stdout",
            stderr=results / "stderr",
            timeout=timeout,
            log=log,
        )
        if log is not None:
            log.close()
        (results / "exitCode").write_text(str(code))
        for path in result_paths:
            source = workdir / path.path.lstrip("/")
            target = results / path.name
            if source.is_dir():
                shutil.move(str(source), str(target))
            else:
                target.mkdir()
        published = None
        all_published: tuple[PublishedResult, ...] = ()
        if publisher is not None:
            if restamp:
                context = context.model_copy(update={"published_at": datetime.now(UTC)})
            if isinstance(publisher, PublisherSpec):
                published = publish_to(results, publisher, context, s3=s3, ipfs=ipfs, local=local)
                all_published = (published,)
            else:
                from .publishers.fanout import publish_many

                all_published = tuple(
                    publish_many(results, publisher, context, s3=s3, ipfs=ipfs, local=local)
                )
                published = all_published[0]
        return JobResult(
            exit_code=code,
            published=published,
            context=context,
            all_published=all_published,
            name=job_name(command, name),
            stdout_tail=tails.stdout_tail.decode("utf-8", "replace"),
            stderr_tail=tails.stderr_tail.decode("utf-8", "replace"),
        )
