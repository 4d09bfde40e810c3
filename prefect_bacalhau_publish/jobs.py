"""Run a job as Bacalhau runs one: inputs in, command, stdout/stderr/exitCode and outputs out, publish."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .errors import PublishError, SpecError
from .publishers import publish_to
from .sources import fetch_source
from .specs import ExecutionContext, InputSource, PublishedResult, PublisherSpec, ResultPath

__all__ = ["JobResult", "execute_job", "fetch_all"]

DEFAULT_RESULT_PATHS = (ResultPath.model_validate({"Name": "outputs", "Path": "/outputs"}),)
MAX_STREAM_BYTES = 1024 * 1024 * 1024
JobCommand = str | Sequence[str] | Callable[[Path], Any]


class JobResult(BaseModel):
    """What a job left: its exit code, the published result (when it had a publisher), its context."""

    model_config = ConfigDict(frozen=True)

    exit_code: int
    published: PublishedResult | None
    context: ExecutionContext
    artifact_key: str | None = None


def fetch_all(inputs: Sequence[InputSource], root: Path, **blocks: Any) -> dict[str, Path]:
    """Materialise every input under `root` at its Target (leading `/` dropped); returns Target → path."""
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
        out[source.target] = fetch_source(source.source, dest, **blocks)
    return out


def _run_callable(func: Callable[[Path], Any], workdir: Path, stdout: Path, stderr: Path) -> int:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    cwd = os.getcwd()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            os.chdir(workdir)
            value = func(workdir)
            code = value if isinstance(value, int) and not isinstance(value, bool) else 0
    except Exception:
        err.write(traceback.format_exc())
        code = 1
    finally:
        os.chdir(cwd)
    stdout.write_text(out.getvalue())
    stderr.write_text(err.getvalue())
    return code


def _run_command(
    command: str | Sequence[str],
    workdir: Path,
    stdout: Path,
    stderr: Path,
    env: Mapping[str, str],
    timeout: float | None,
) -> int:
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        try:
            done = subprocess.run(
                command,
                shell=isinstance(command, str),
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            err.write(f"\njob timed out after {timeout}s\n".encode())
            return 124
        except OSError as exc:
            err.write(f"could not start the command: {exc}\n".encode())
            return 127
    for stream in (stdout, stderr):
        if stream.stat().st_size > MAX_STREAM_BYTES:
            with open(stream, "r+b") as handle:
                handle.truncate(MAX_STREAM_BYTES)
    return done.returncode


def execute_job(
    command: JobCommand,
    *,
    publisher: PublisherSpec | None,
    context: ExecutionContext,
    inputs: Sequence[InputSource] = (),
    result_paths: Sequence[ResultPath] = DEFAULT_RESULT_PATHS,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    s3: Any = None,
    ipfs: Any = None,
    local: Any = None,
    restamp: bool = True,
) -> tuple[int, PublishedResult | None, ExecutionContext]:
    """Run `command` in a fresh working folder, lay out its results as Bacalhau does, and publish them.

    The working folder holds each input at its Target and an empty folder per result path (by default
    `outputs/`); a string command runs in a shell, a list without one, a callable gets the folder.
    The command sees `INPUTS`/`OUTPUTS` variables pointing at those folders, and the context's ids.
    With `restamp`, the context's `published_at` is set to the moment of publishing.
    """
    names = [path.name for path in result_paths]
    if len(set(names)) != len(names):
        raise PublishError("ResultPaths names must be unique")
    with tempfile.TemporaryDirectory(prefix="pbp-job-") as tmp:
        workdir = Path(tmp) / "work"
        results = Path(tmp) / "results"
        workdir.mkdir()
        results.mkdir()
        fetch_all(inputs, workdir, s3=s3, ipfs=ipfs, local=local)
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
        }
        stdout, stderr = results / "stdout", results / "stderr"
        if callable(command):
            code = _run_callable(command, workdir, stdout, stderr)
        else:
            code = _run_command(command, workdir, stdout, stderr, job_env, timeout)
        (results / "exitCode").write_text(str(code))
        for path in result_paths:
            source = workdir / path.path.lstrip("/")
            target = results / path.name
            if source.is_dir():
                shutil.move(str(source), str(target))
            else:
                target.mkdir()
        if publisher is None:
            return code, None, context
        if restamp:
            context = context.model_copy(update={"published_at": datetime.now(UTC)})
        return code, publish_to(results, publisher, context, s3=s3, ipfs=ipfs, local=local), context
