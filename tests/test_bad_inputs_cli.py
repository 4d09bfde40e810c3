"""Bad inputs tried from outside (#26): `prefect-bacalhau` as a whole process, one table of refusals.

Every row runs `.venv/bin/prefect-bacalhau` in a scratch folder and asserts the exit code, that stderr is
exactly one `error:` line (or, for the placeholder row, only `warning:` lines) matching the row's pattern,
that no traceback is printed, and that nothing in the scratch folder changed: no file lost, none left behind.
`get` rows whose spec names a real local result server also assert that no byte was requested from it, so
their refusal came before any download. Servers are real (MinIO, the result server), all on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from prefect_bacalhau_publish.accesslog import access_logger
from prefect_bacalhau_publish.blocks import LocalResultServer
from prefect_bacalhau_publish.publishers import publish_to
from prefect_bacalhau_publish.server import running_server
from prefect_bacalhau_publish.specs import ExecutionContext, PublisherSpec
from prefect_bacalhau_publish.testing import MinioServer, free_port

EXE = Path(sys.executable).with_name("prefect-bacalhau")
TIMEOUT = 120
"""Seconds any one run may take before it counts as a hang (`serve` rows import Prefect, about 4 s)."""


class Row(NamedTuple):
    command: str
    """The arguments, split on spaces."""
    code: int
    message: str
    """A regex the single `error:` line (or one `warning:` line, for exit 0) must match (re.search)."""
    seconds: float | None = None
    """When set, the run must end within this many seconds (so no Prefect server was started)."""

    @property
    def argv(self) -> list[str]:
        return self.command.split(" ")


P = pytest.param
# `@name@` in a command stands for a value the test prepares (`_values`); other paths are relative to the
# scratch folder, the process's working directory.
TABLE = [
    # 1. a misspelt spec path: refused at once, without starting Prefect to blame an artifact key
    P(Row("get ./no-such-spec.json", 1, r"^error: spec file \./no-such-spec\.json does not exist: check", 3),
      id="get-missing-spec-dot-slash"),
    P(Row("get runs/x.yaml", 1, r"^error: spec file runs/x\.yaml does not exist: check the path", 3),
      id="get-missing-spec-in-folder"),
    P(Row("get no-such.yml -o out", 1, r"^error: spec file no-such\.yml does not exist", 3),
      id="get-missing-spec-suffix"),
    P(Row("get adir/", 1, r"^error: adir/ is a folder, not a spec file", 3), id="get-folder"),
    # 2. serve: port out of range or in use, storage path that is a file
    P(Row("serve --port 70000 --storage-dir store", 1, r"^error: --port 70000 is out of range: give 0 to 65535"),
      id="serve-port-too-big"),
    P(Row("serve --port -1 --storage-dir store", 1, r"^error: --port -1 is out of range: give 0 to 65535"),
      id="serve-port-negative"),
    P(Row("serve --host 127.0.0.1 --port @busy@ --storage-dir store", 1,
          r"^error: port \d+ on 127\.0\.0\.1 is in use: "), id="serve-port-in-use"),
    P(Row("serve --host 127.0.0.1 --port 0 --storage-dir afile", 1,
          r"^error: storage folder afile is a file, not a folder"), id="serve-storage-is-a-file"),
    # 3. readdress: a missing or folder argument is named, and no file is rewritten before all are read
    P(Row("readdress http://a:1 http://b:2 missing.json", 1,
          r"^error: spec file missing\.json does not exist: nothing was rewritten"), id="readdress-missing"),
    P(Row("readdress http://127.0.0.1:1 http://127.0.0.1:2 old.json missing.json", 1,
          r"^error: spec file missing\.json does not exist: nothing was rewritten"), id="readdress-first-kept"),
    P(Row("readdress http://127.0.0.1:1 http://127.0.0.1:2 old.json adir", 1,
          r"^error: adir is a folder, not a spec file: nothing was rewritten"), id="readdress-folder"),
    # 4. get into a destination that cannot be written or is taken: refused before any byte is requested
    P(Row("get @served@ -o afile/out", 1, r"^error: cannot write afile/out: \S*/afile is a file, not a folder"),
      id="get-parent-is-a-file"),
    P(Row("get @served@ -o @readonly@/out", 1, r"^error: cannot write \S*/out: its folder \S+ is not writable \("),
      id="get-parent-read-only"),
    P(Row("get @served@ -o /proc/pbp-no-such/out", 1,
          r"^error: cannot write /proc/pbp-no-such/out: its folder /proc/pbp-no-such cannot be created"),
      id="get-parent-cannot-be-created"),
    P(Row("get @served@ -o full", 1, r"^error: full is not empty: choose another --output or pass --force"),
      id="get-into-non-empty"),
    P(Row("get @served@ -o afile", 1, r"^error: afile is a file: choose another --output or pass --force"),
      id="get-onto-a-file"),
    # fixed before #26, kept in the table
    P(Row("prune --storage-dir store --max-age-hours -1", 1,
          r"^error: invalid setting: max_age: Value error, must not be negative"), id="prune-negative-age"),
    P(Row("prune --storage-dir store --max-total-bytes -1", 1,
          r"^error: invalid setting: max_total_bytes: Input should be greater than or equal to 0"),
      id="prune-negative-size"),
    P(Row("prune --storage-dir no-such-store --max-age-hours 1", 1,
          r"^error: storage folder no-such-store does not exist or is not a folder"), id="prune-missing"),
    P(Row("publish res -p s3://@bucket@/k/{bogus},opt=endpoint=@minio@", 0,
          r"^warning: key 'k/\{bogus\}': \{bogus\} is not a placeholder and is kept as written"),
      id="publish-unknown-placeholder-warns"),
    P(Row("get @bare@ -o out", 1, r"^error: S3 endpoint '127\.0\.0\.1:\d+' has no scheme: write http://127\.0\.0\.1:"),
      id="get-endpoint-without-scheme"),
    # `-p ipfs` starts its upload before the spec models load: refusals as on the other paths
    P(Row("publish no-such -p ipfs --ipfs-api /ip4/127.0.0.1/tcp/@closed@", 1,
          r"^error: result folder no-such does not exist or is not a folder$", 3), id="publish-ipfs-missing-folder"),
    P(Row("publish afile -p IPFS --ipfs-api /ip4/127.0.0.1/tcp/@closed@", 1,
          r"^error: result folder afile does not exist or is not a folder$", 3), id="publish-ipfs-folder-is-a-file"),
    P(Row("publish res -p ipfs --ipfs-api /ip4/127.0.0.1/tcp/@closed@", 1,
          r"^error: cannot reach the Kubo RPC API at http://127\.0\.0\.1:\d+: .*is the Kubo daemon running\?$", 3), id="publish-ipfs-unreachable"),
    # 5. usage errors: exit 2, one line too
    P(Row("serve --port abc", 2, r"^error: Invalid value for --port"), id="usage-bad-int"),
    P(Row("frobnicate", 2, r'^error: Unknown command "frobnicate"'), id="usage-unknown-command"),
    P(Row("readdress http://a:1", 2, r"^error: .*requires an argument"), id="usage-missing-argument"),
]  # fmt: skip


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (lstat, no following) with a file's bytes; None for a folder."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        found[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return found


class Served(NamedTuple):
    spec: dict[str, Any]
    requests: list[str]
    """Paths the result server was asked for (its access log), from the control request on."""


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[Served]:
    """A real result server holding one published archive, and the access-log paths it records."""
    storage = tmp_path / "served-store"
    folder = tmp_path / "served-result"
    folder.mkdir()
    (folder / "stdout").write_text("served\n")
    requests: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            requests.append(json.loads(record.getMessage())["path"])

    handler, level = Recorder(), access_logger.level
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    try:
        with running_server(LocalResultServer(storage_dir=storage)) as base:
            config = LocalResultServer(storage_dir=storage, port=int(base.rsplit(":", 1)[1]))
            result = publish_to(folder, PublisherSpec(type="local"), ExecutionContext.new(), local=config)
            url = result.to_bacalhau()["Params"]["URL"]
            with httpx.Client(trust_env=False) as http:  # control: the recorder does see requests
                assert http.head(url).status_code == 200
            deadline = time.monotonic() + 10
            while not requests and time.monotonic() < deadline:
                time.sleep(0.01)  # the access line is written just after the response ends
            assert requests == [url.removeprefix(base)]
            requests.clear()
            yield Served(result.to_bacalhau(), requests)
    finally:
        access_logger.removeHandler(handler)
        access_logger.setLevel(level)


@pytest.fixture()
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 something already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.fixture()
def scratch(tmp_path: Path) -> Iterator[Path]:
    """The working folder every row runs in, with the files the table names."""
    root = tmp_path / "scratch"
    (root / "adir").mkdir(parents=True)
    (root / "afile").write_text("a file, not a folder\n")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("mine\n")
    (root / "store").mkdir()
    (root / "store" / "e-keep.tar.gz").write_bytes(b"kept archive")
    (root / "res").mkdir()
    (root / "res" / "stdout").write_text("result\n")
    old = {"Type": "urlDownload", "Params": {"URL": "http://127.0.0.1:1/e-1.tar.gz"}}
    (root / "old.json").write_text(json.dumps(old))
    readonly = root / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        yield root
    finally:
        readonly.chmod(0o755)


def _values(request: pytest.FixtureRequest, text: str, root: Path, env: dict[str, str]) -> dict[str, str]:
    """What each `@name@` in the command `text` stands for, preparing only what the row uses (MinIO's
    credentials go into `env`)."""
    values: dict[str, str] = {}
    if "@served@" in text:
        served: Served = request.getfixturevalue("served")
        (root / "served.json").write_text(json.dumps(served.spec))
        values["@served@"] = "served.json"
    if "@busy@" in text:
        values["@busy@"] = str(request.getfixturevalue("busy_port"))
    if "@closed@" in text:
        values["@closed@"] = str(free_port())  # nothing listens there: the connection is refused
    if "@readonly@" in text:
        # Root ignores permission bits, so for root the unwritable parent is /proc, where nobody can create
        # a file (a read-only bind mount or tmpfs is not available in the test environment).
        values["@readonly@"] = "/proc" if os.geteuid() == 0 else str(root / "ro")
    if "@minio@" in text or "@bare@" in text:
        minio: MinioServer = request.getfixturevalue("minio")
        env |= {"AWS_ACCESS_KEY_ID": minio.user, "AWS_SECRET_ACCESS_KEY": minio.password}
        env["AWS_REGION"] = "us-east-1"
        values["@minio@"] = minio.endpoint
        if "@bucket@" in text:
            values["@bucket@"] = request.getfixturevalue("bucket")
        bare = minio.endpoint.removeprefix("http://")  # as a user might write it: no scheme
        spec = {"Type": "s3", "Params": {"Bucket": "pbp-unversioned", "Key": "k/", "Endpoint": bare}}
        (root / "bare.json").write_text(json.dumps(spec))
        values["@bare@"] = "bare.json"
    return values


@pytest.mark.parametrize("case", TABLE)
def test_bad_input_is_one_line(case: Row, scratch: Path, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    values = _values(request, case.command, scratch, env)
    argv = case.argv
    for name, value in values.items():
        argv = [arg.replace(name, value) for arg in argv]
    before = snapshot(scratch)

    started = time.monotonic()
    done = subprocess.run(
        [str(EXE), *argv], cwd=scratch, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    elapsed = time.monotonic() - started

    assert done.returncode == case.code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    if case.code == 0:
        assert not any(line.startswith("error:") for line in lines), done.stderr
        assert lines and all(line.startswith("warning:") for line in lines), done.stderr
        assert any(re.search(case.message, line) for line in lines), done.stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert re.search(case.message, lines[0]), lines[0]
        assert done.stdout == ""
    if case.seconds is not None:
        assert elapsed < case.seconds, f"took {elapsed:.1f}s: {done.stderr}"
    assert snapshot(scratch) == before  # nothing lost, nothing left behind (staging folders included)
    if case.argv[0] == "prune":
        assert (scratch / "store" / "e-keep.tar.gz").read_bytes() == b"kept archive"
    if "@served@" in case.command:
        served: Served = request.getfixturevalue("served")
        assert served.requests == [], "refused only after asking the result server"


def test_serve_creates_a_missing_storage_folder_logs_each_line_once_and_exits_130_on_ctrl_c(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "not" / "yet"
    proc = subprocess.Popen(
        [str(EXE), "serve", "--host", "127.0.0.1", "--port", "0", "--storage-dir", str(storage)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    with contextlib.ExitStack() as stack:
        stack.callback(proc.kill)
        lines: list[str] = []
        for line in iter(proc.stderr.readline, ""):  # a hang ends in the run's own timeout
            lines.append(line.rstrip("\n"))
            if "running on" in line:
                break
        ready = re.search(r"running on (http://127\.0\.0\.1:\d+)", lines[-1])
        assert ready is not None, lines
        assert storage.is_dir() and storage.stat().st_mode & 0o777 == 0o700
        with httpx.Client(trust_env=False) as http:
            assert http.get(f"{ready[1]}/").status_code == 404  # serving: `/` is never listed
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=TIMEOUT)
        rest = proc.stderr.read()
    lines += rest.splitlines()
    assert proc.returncode == 130, lines
    assert lines[-1] == "interrupted"
    assert "Traceback" not in rest
    messages = [line.split(": ", 1)[-1] for line in lines]  # without the timestamp and logger
    assert len(messages) == len(set(messages)), lines  # each log line once (Prefect's handler used to echo)
    assert not any(" | INFO " in line for line in lines), lines
    assert any(f"created the storage folder {storage}" in line for line in lines)
